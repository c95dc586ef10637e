//! Exact translations of traffic shaped like the real thing: a Claude Code request, a Kimi streamed answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kimi_dialects::anthropic::{
    AnswerContext, ChatTarget, ChatToMessagesStream, MessagesTarget, MessagesToChatStream,
    chat_request_to_messages, chat_response_to_messages, client_session_id,
    messages_response_to_chat, request_to_chat, session_id_from_user_id,
};
use serde_json::{Value, json};

/// Shaped like Claude Code 2.x's `POST /v1/messages`: three system text blocks (two with `cache_control`), tools
/// without `type`, adaptive thinking, context management, an effort, a JSON `metadata.user_id`, and a system
/// message inside `messages`.
fn claude_code_request(tools: usize) -> Value {
    let user_id = json!({
        "device_id": "d3v1ce",
        "account_uuid": "acc-0001",
        "session_id": "5e55-10n",
    })
    .to_string();
    let tools: Vec<Value> = (0..tools)
        .map(|i| {
            json!({
                "name": format!("Tool{i}"),
                "description": format!("does thing {i}"),
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"], "additionalProperties": false, "$schema": "http://json-schema.org/draft-07/schema#"},
            })
        })
        .collect();
    json!({
        "model": "claude-opus-4-5",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "read main.rs", "cache_control": {"type": "ephemeral"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should read it.", "signature": "c2lnbmF0dXJl"},
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_01", "name": "Tool0", "input": {"path": "main.rs"}},
                {"type": "tool_use", "id": "toolu_02", "name": "Tool1", "input": {"path": "nope.rs"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "fn main() {}"}]},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "no such file", "is_error": true},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
            ]},
            {"role": "system", "content": "Keep answers short."},
            {"role": "user", "content": "and now?"},
        ],
        "temperature": 1,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "tools": tools,
        "metadata": {"user_id": user_id},
        "max_tokens": 32000,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stream": true,
    })
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn claude_code_request_translates_exactly() {
    let target = ChatTarget {
        reasoning_effort: true,
        max_output_tokens: Some(16384),
        ..ChatTarget::new("kimi-k2.5")
    };
    let t = request_to_chat(&body(&claude_code_request(2)), &target).unwrap();
    assert!(t.stream);
    assert_eq!(t.client_model, "claude-opus-4-5");
    let expected = json!({
        "model": "kimi-k2.5",
        "messages": [
            {"role": "system", "content": "x-anthropic-billing-header: cc_version=2.1\n\nYou are Claude Code.\n\nBe careful."},
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "read main.rs"},
            ]},
            {"role": "assistant", "content": "Reading.", "reasoning_content": "I should read it.", "tool_calls": [
                {"id": "toolu_01", "type": "function", "function": {"name": "Tool0", "arguments": "{\"path\":\"main.rs\"}"}},
                {"id": "toolu_02", "type": "function", "function": {"name": "Tool1", "arguments": "{\"path\":\"nope.rs\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_01", "content": "fn main() {}"},
            {"role": "tool", "tool_call_id": "toolu_02", "content": "[tool error] no such file"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]},
            {"role": "system", "content": "Keep answers short."},
            {"role": "user", "content": "and now?"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "Tool0", "description": "does thing 0", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"], "additionalProperties": false, "$schema": "http://json-schema.org/draft-07/schema#"}}},
            {"type": "function", "function": {"name": "Tool1", "description": "does thing 1", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"], "additionalProperties": false, "$schema": "http://json-schema.org/draft-07/schema#"}}},
        ],
        "max_tokens": 16384,
        "temperature": 1,
        "user": "acc-0001",
        "reasoning_effort": "high",
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    assert_eq!(json_of(&t.body), expected);
    // Key order matters to some providers' caches and to byte-exact tests: model first.
    assert!(t.body.starts_with(br#"{"model":"kimi-k2.5","messages":"#));
    assert_eq!(t.dropped.cache_control, 3);
    assert_eq!(t.dropped.fields, vec!["context_management".to_owned()]);
    assert!(t.dropped.blocks.is_empty());
}

#[test]
fn claude_code_request_with_24_tools_and_a_plain_target() {
    let t = request_to_chat(
        &body(&claude_code_request(24)),
        &ChatTarget::new("deepseek-chat"),
    )
    .unwrap();
    let chat = json_of(&t.body);
    assert_eq!(chat["tools"].as_array().unwrap().len(), 24);
    assert_eq!(chat["max_tokens"], 32000);
    assert!(chat.get("reasoning_effort").is_none());
    assert_eq!(
        t.dropped.fields,
        vec![
            "output_config.effort".to_owned(),
            "thinking".to_owned(),
            "context_management".to_owned()
        ]
    );
}

#[test]
fn cache_control_is_kept_for_a_caching_provider() {
    let target = ChatTarget {
        cache_control: true,
        ..ChatTarget::new("anthropic/claude-opus-4.5")
    };
    let t = request_to_chat(&body(&claude_code_request(1)), &target).unwrap();
    let chat = json_of(&t.body);
    assert_eq!(
        chat["messages"][0]["content"],
        json!([
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ])
    );
    assert_eq!(
        chat["messages"][1]["content"][1]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(t.dropped.cache_control, 0);
}

#[test]
fn session_ids() {
    assert_eq!(
        client_session_id(&body(&claude_code_request(0))).as_deref(),
        Some("5e55-10n")
    );
    assert_eq!(
        session_id_from_user_id("user_abc_account_0001_session_9f8e").as_deref(),
        Some("9f8e")
    );
    assert_eq!(session_id_from_user_id("alice").as_deref(), Some("alice"));
    assert_eq!(session_id_from_user_id(""), None);
    assert_eq!(client_session_id(br#"{"model":"m","messages":[]}"#), None);
}

#[test]
fn tool_choice_and_stops() {
    let req = json!({
        "model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}, {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
        "stop_sequences": ["END"], "top_k": 5, "top_p": 0.9,
    });
    let t = request_to_chat(
        &body(&req),
        &ChatTarget {
            top_k: true,
            ..ChatTarget::new("m")
        },
    )
    .unwrap();
    let chat = json_of(&t.body);
    assert_eq!(
        chat["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(chat["parallel_tool_calls"], false);
    assert_eq!(chat["stop"], json!(["END"]));
    assert_eq!(chat["top_k"], 5);
    assert_eq!(chat["tools"].as_array().unwrap().len(), 1);
    assert_eq!(
        t.dropped.blocks,
        vec![("tool.web_search_20250305".to_owned(), 1)]
    );
    assert!(chat.get("stream_options").is_none());
    for (choice, expected) in [
        ("auto", json!("auto")),
        ("any", json!("required")),
        ("none", json!("none")),
    ] {
        let mut r = req.clone();
        r["tool_choice"] = json!({"type": choice});
        let chat = json_of(
            &request_to_chat(&body(&r), &ChatTarget::new("m"))
                .unwrap()
                .body,
        );
        assert_eq!(chat["tool_choice"], expected);
        assert!(chat.get("parallel_tool_calls").is_none());
    }
}

#[test]
fn bad_requests_are_errors() {
    assert!(request_to_chat(b"not json", &ChatTarget::new("m")).is_err());
    assert!(request_to_chat(b"[]", &ChatTarget::new("m")).is_err());
    assert!(request_to_chat(br#"{"messages":[]}"#, &ChatTarget::new("m")).is_err());
    let err = request_to_chat(
        br#"{"model":"m","messages":[{"role":"bot","content":"x"}]}"#,
        &ChatTarget::new("m"),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "messages[0].role: expected user, assistant or system"
    );
    assert_eq!(err.status(), 400);
}

fn ctx() -> AnswerContext {
    AnswerContext {
        client_model: "claude-opus-4-5".into(),
        ..AnswerContext::default()
    }
}

#[test]
fn chat_answer_becomes_a_message() {
    let answer = json!({
        "id": "chatcmpl-abc123", "object": "chat.completion", "created": 1, "model": "kimi-k2.5",
        "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Let me look.", "reasoning_content": "Need the file.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": "{\"path\":\"a.rs\"}"}}],
        }, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 40, "total_tokens": 1240, "prompt_tokens_details": {"cached_tokens": 1000}},
    });
    let out = chat_response_to_messages(&body(&answer), &ctx()).unwrap();
    let expected = json!({
        "id": "msg_abc123", "type": "message", "role": "assistant", "model": "claude-opus-4-5",
        "content": [
            {"type": "thinking", "thinking": "Need the file.", "signature": ""},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"path": "a.rs"}},
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 200, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1000, "output_tokens": 40},
    });
    assert_eq!(json_of(&out), expected);
}

#[test]
fn stop_reasons() {
    let answer = |finish: &str, extra: Value| {
        let mut choice = json!({"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": finish});
        for (k, v) in extra.as_object().unwrap() {
            choice[k] = v.clone();
        }
        json!({"id": "chatcmpl-1", "choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "cached_tokens": 2}})
    };
    let ctx = AnswerContext {
        stop_sequences: vec!["END".into()],
        ..ctx()
    };
    let read = |v: Value| json_of(&chat_response_to_messages(&body(&v), &ctx).unwrap());
    assert_eq!(read(answer("stop", json!({})))["stop_reason"], "end_turn");
    let vllm = read(answer("stop", json!({"stop_reason": "END"})));
    assert_eq!(
        (vllm["stop_reason"].as_str(), vllm["stop_sequence"].as_str()),
        (Some("stop_sequence"), Some("END"))
    );
    assert_eq!(
        read(answer("stop", json!({"stop_reason": "OTHER"})))["stop_reason"],
        "end_turn"
    );
    assert_eq!(
        read(answer("length", json!({})))["stop_reason"],
        "max_tokens"
    );
    assert_eq!(
        read(answer("content_filter", json!({})))["stop_reason"],
        "refusal"
    );
    // Moonshot's top-level cached_tokens.
    assert_eq!(
        read(answer("stop", json!({})))["usage"]["cache_read_input_tokens"],
        2
    );
    assert_eq!(read(answer("stop", json!({})))["usage"]["input_tokens"], 1);
}

/// The data payloads of a Kimi streamed answer: role, reasoning, text, two tool calls (arguments in pieces),
/// the finish chunk, then the usage chunk with `choices: []`, then `[DONE]`.
fn kimi_stream() -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-kimi1", "object": "chat.completion.chunk", "created": 1, "model": "kimi-k2.5",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"reasoning_content": "The user wants "}), Value::Null),
        chunk(json!({"reasoning_content": "a file."}), Value::Null),
        chunk(json!({"content": "Reading it."}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "id": "Read:0", "type": "function", "function": {"name": "Read", "arguments": ""}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"path\":"}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"a.rs\"}"}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 1, "id": "Grep:1", "type": "function", "function": {"name": "Grep", "arguments": "{}"}}]}), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        json!({"id": "chatcmpl-kimi1", "object": "chat.completion.chunk", "created": 1, "model": "kimi-k2.5", "choices": [],
            "usage": {"prompt_tokens": 900, "completion_tokens": 30, "total_tokens": 930, "cached_tokens": 512}})
        .to_string(),
        "[DONE]".to_owned(),
    ]
}

#[test]
fn kimi_stream_translates_exactly() {
    let mut s = ChatToMessagesStream::new(&ctx());
    let mut out = Vec::new();
    for payload in kimi_stream() {
        s.push(payload.as_bytes(), &mut out);
    }
    s.finish(&mut out);
    assert!(s.is_done());
    let expected = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_kimi1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-opus-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":0}}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"The user wants \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"a file.\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Reading it.\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"Read:0\",\"name\":\"Read\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"path\\\":\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"a.rs\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\",\"id\":\"Grep:1\",\"name\":\"Grep\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":3}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":388,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":512,\"output_tokens\":30}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

#[test]
fn kimi_usage_inside_the_choice_ends_the_message_at_once() {
    let mut s = ChatToMessagesStream::new(&AnswerContext {
        input_tokens: Some(77),
        ..ctx()
    });
    let mut out = Vec::new();
    s.push(
        br#"{"id":"chatcmpl-x","choices":[{"index":0,"delta":{"content":"hi"}}]}"#,
        &mut out,
    );
    assert!(String::from_utf8_lossy(&out).contains(r#""input_tokens":77"#));
    s.push(
        br#"{"id":"chatcmpl-x","choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}]}"#,
        &mut out,
    );
    assert!(s.is_done());
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    assert!(text.contains(r#""stop_reason":"end_turn""#));
}

#[test]
fn stream_errors_and_cuts() {
    let mut s = ChatToMessagesStream::new(&ctx());
    let mut out = Vec::new();
    s.push(
        br#"{"id":"chatcmpl-x","choices":[{"index":0,"delta":{"content":"hi"}}]}"#,
        &mut out,
    );
    out.clear();
    s.push(br#"{"error":{"message":"Rate limit reached","type":"rate_limit_reached_error","code":429}}"#, &mut out);
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Rate limit reached\"}}\n\n"
    );
    out.clear();
    s.push(b"[DONE]", &mut out);
    s.finish(&mut out);
    assert!(out.is_empty());

    // Cut before any finish_reason: an error, no made-up stop.
    let mut s = ChatToMessagesStream::new(&ctx());
    let mut out = Vec::new();
    s.push(
        br#"{"id":"chatcmpl-x","choices":[{"index":0,"delta":{"content":"hi"}}]}"#,
        &mut out,
    );
    s.finish(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("\"type\":\"api_error\",\"message\":\"the upstream event stream ended before the answer was complete\"}}\n\n"));
    assert!(!text.contains("message_stop"));

    // Finished but no [DONE]: the message is closed by finish().
    let mut s = ChatToMessagesStream::new(&ctx());
    let mut out = Vec::new();
    s.push(br#"{"id":"chatcmpl-x","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"length"}]}"#, &mut out);
    assert!(!s.is_done());
    s.finish(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(r#""stop_reason":"max_tokens""#));
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

#[test]
fn chat_request_becomes_a_messages_request() {
    let req = json!({
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "reasoning_content": "hmm", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
            {"role": "tool", "tool_call_id": "call_2", "content": "[tool error] boom"},
            {"role": "user", "content": "go on"},
            {"role": "developer", "content": "Late rule."},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "F", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "parallel_tool_calls": false,
        "temperature": 1.5, "stop": "END", "user": "u1", "stream": true, "stream_options": {"include_usage": true},
        "seed": 7,
    });
    let t = chat_request_to_messages(
        &body(&req),
        &MessagesTarget {
            model: "claude-sonnet-4-5".into(),
            ..MessagesTarget::default()
        },
    )
    .unwrap();
    assert!(t.stream && t.include_usage);
    let expected = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 8192,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "ok"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "boom", "is_error": true},
                {"type": "text", "text": "go on"},
            ]},
            {"role": "system", "content": "Late rule."},
        ],
        "tools": [{"name": "f", "description": "F", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "temperature": 1.0,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"},
        "stream": true,
    });
    assert_eq!(json_of(&t.body), expected);
    assert_eq!(t.dropped.fields, vec!["seed".to_owned()]);
    assert_eq!(t.dropped.blocks, vec![("reasoning_content".to_owned(), 1)]);
}

#[test]
fn reasoning_effort_becomes_a_thinking_budget() {
    let req = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high", "max_tokens": 4000, "temperature": 0.2});
    let target = MessagesTarget {
        model: "c".into(),
        max_output_tokens: Some(64000),
        thinking: true,
    };
    let t = chat_request_to_messages(&body(&req), &target).unwrap();
    let v = json_of(&t.body);
    assert_eq!(
        v["thinking"],
        json!({"type": "enabled", "budget_tokens": 3999})
    );
    assert!(v.get("temperature").is_none());
    assert_eq!(t.dropped.fields, vec!["temperature".to_owned()]);
    let none = json!({"model": "m", "messages": [], "reasoning_effort": "none"});
    let v = json_of(
        &chat_request_to_messages(&body(&none), &target)
            .unwrap()
            .body,
    );
    assert_eq!(v["thinking"], json!({"type": "disabled"}));
    assert_eq!(v["max_tokens"], 64000);
}

#[test]
fn messages_answer_becomes_a_chat_answer() {
    let answer = json!({
        "id": "msg_01X", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "hm", "signature": "sig"},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 7},
    });
    let ctx = AnswerContext {
        client_model: "gpt-x".into(),
        created: 1_700_000_000,
        ..AnswerContext::default()
    };
    let out = messages_response_to_chat(&body(&answer), &ctx).unwrap();
    let expected = json!({
        "id": "chatcmpl-01X", "object": "chat.completion", "created": 1_700_000_000u64, "model": "gpt-x",
        "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Calling.", "reasoning_content": "hm",
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}],
        }, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 115, "completion_tokens": 7, "total_tokens": 122, "prompt_tokens_details": {"cached_tokens": 100}},
    });
    assert_eq!(json_of(&out), expected);
}

#[test]
fn messages_stream_becomes_chat_chunks() {
    let events = [
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"cache_read_input_tokens":4,"output_tokens":1}}}"#,
        ),
        ("ping", r#"{"type":"ping"}"#),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"xyz"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":1}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":2}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":20}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];
    let ctx = AnswerContext {
        client_model: "gpt-x".into(),
        include_usage: true,
        ..AnswerContext::default()
    };
    let mut s = MessagesToChatStream::new(&ctx);
    let mut out = Vec::new();
    for (name, data) in events {
        s.push(name, data.as_bytes(), &mut out);
    }
    assert!(s.is_done());
    let text = String::from_utf8(out).unwrap();
    let head = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":0,"model":"gpt-x","choices":[{"index":0,"delta":"#;
    let expected = [
        format!("{head}{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n"),
        format!("{head}{{\"reasoning_content\":\"hm\"}},\"finish_reason\":null}}]}}\n\n"),
        format!("{head}{{\"content\":\"Hi\"}},\"finish_reason\":null}}]}}\n\n"),
        format!("{head}{{\"tool_calls\":[{{\"index\":0,\"id\":\"toolu_1\",\"type\":\"function\",\"function\":{{\"name\":\"f\",\"arguments\":\"\"}}}}]}},\"finish_reason\":null}}]}}\n\n"),
        format!("{head}{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":\"{{\\\"a\\\":\"}}}}]}},\"finish_reason\":null}}]}}\n\n"),
        format!("{head}{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":\"1}}\"}}}}]}},\"finish_reason\":null}}]}}\n\n"),
        format!("{head}{{}},\"finish_reason\":\"tool_calls\"}}]}}\n\n"),
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":20,\"total_tokens\":34,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n".to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    assert_eq!(text, expected);
}

#[test]
fn messages_stream_error_event() {
    let mut s = MessagesToChatStream::new(&AnswerContext::default());
    let mut out = Vec::new();
    s.push(
        "",
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        &mut out,
    );
    assert!(s.is_done());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"overloaded_error\",\"param\":null,\"code\":null}}\n\n"
    );
}
