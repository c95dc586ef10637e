//! Property tests: conversations keep their meaning through Anthropic → chat → Anthropic; a chat stream gives the
//! same Anthropic message however its text is cut into chunks, the same as the whole JSON answer, and a
//! well-formed Anthropic event stream; that stream translated back to chat chunks gives the original answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kimi_dialects::anthropic::{
    AnswerContext, ChatTarget, ChatToMessagesStream, MessagesTarget, MessagesToChatStream,
    chat_request_to_messages, chat_response_to_messages, request_to_chat,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

// ------------------------------------------------------------ conversations

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 éü世]{1,12}"
}

fn tool_input() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        "[a-z]{1,5}",
        prop_oneof![
            any::<i32>().prop_map(Value::from),
            text().prop_map(Value::from)
        ],
        0..3,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
}

#[derive(Clone, Debug)]
enum UserExtra {
    Text(String),
    Image(String),
}

fn user_extra() -> impl Strategy<Value = UserExtra> {
    prop_oneof![
        3 => text().prop_map(UserExtra::Text),
        1 => "[A-Za-z0-9]{4,12}".prop_map(UserExtra::Image),
    ]
}

#[derive(Clone, Debug)]
struct Turn {
    thinking: Option<String>,
    texts: Vec<String>,
    tools: Vec<(String, Value)>,
    /// Results for the tools: text and is_error.
    results: Vec<(String, bool)>,
    user: Vec<UserExtra>,
}

fn turn() -> impl Strategy<Value = Turn> {
    (
        prop::option::of(text()),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(("[A-Z][a-z]{1,6}", tool_input()), 0..3),
        prop::collection::vec((text(), any::<bool>()), 3),
        prop::collection::vec(user_extra(), 1..3),
    )
        .prop_map(|(thinking, mut texts, tools, results, user)| {
            if texts.is_empty() && tools.is_empty() {
                texts.push("ok".into());
            }
            Turn {
                thinking,
                texts,
                tools,
                results,
                user,
            }
        })
}

/// Anthropic messages: a user turn, then per turn an assistant message and a user message with the tool results
/// (first) and more user content.
fn conversation(first: &[UserExtra], turns: &[Turn]) -> Vec<Value> {
    let user_blocks = |extras: &[UserExtra]| -> Vec<Value> {
        extras
            .iter()
            .map(|e| match e {
                UserExtra::Text(t) => json!({"type": "text", "text": t}),
                UserExtra::Image(d) => json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}}),
            })
            .collect()
    };
    let mut msgs = vec![json!({"role": "user", "content": user_blocks(first)})];
    for (n, t) in turns.iter().enumerate() {
        let mut blocks = Vec::new();
        if let Some(th) = &t.thinking {
            blocks.push(json!({"type": "thinking", "thinking": th, "signature": "sig"}));
        }
        for x in &t.texts {
            blocks.push(json!({"type": "text", "text": x}));
        }
        for (i, (name, input)) in t.tools.iter().enumerate() {
            blocks.push(json!({"type": "tool_use", "id": format!("toolu_{n}_{i}"), "name": name, "input": input}));
        }
        msgs.push(json!({"role": "assistant", "content": blocks}));
        let mut user = Vec::new();
        for (i, _) in t.tools.iter().enumerate() {
            let (content, is_error) = &t.results[i];
            let mut r = json!({"type": "tool_result", "tool_use_id": format!("toolu_{n}_{i}"), "content": content});
            if *is_error {
                r["is_error"] = json!(true);
            }
            user.push(r);
        }
        user.extend(user_blocks(&t.user));
        msgs.push(json!({"role": "user", "content": user}));
    }
    msgs
}

/// What a conversation means, with the choices of the translation folded in: thinking set aside (Anthropic
/// wants it signed, so it does not come back), assistant texts joined by "\n", `is_error: false` as absent.
fn meaning(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let blocks = m["content"].as_array().cloned().unwrap_or_default();
            if m["role"] == "assistant" {
                let texts: Vec<&str> = blocks
                    .iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str())
                    .collect();
                let tools: Vec<Value> = blocks
                    .iter()
                    .filter(|b| b["type"] == "tool_use")
                    .map(|b| json!([b["id"], b["name"], b["input"]]))
                    .collect();
                json!({"assistant": texts.join("\n"), "tools": tools})
            } else {
                let items: Vec<Value> = blocks
                    .iter()
                    .map(|b| match b["type"].as_str() {
                        Some("tool_result") => json!([
                            "result",
                            b["tool_use_id"],
                            b["content"],
                            b["is_error"].as_bool().unwrap_or(false)
                        ]),
                        Some("image") => json!(["image", b["source"]]),
                        _ => json!(["text", b["text"]]),
                    })
                    .collect();
                json!({"user": items})
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn conversations_keep_their_meaning(first in prop::collection::vec(user_extra(), 1..3), turns in prop::collection::vec(turn(), 0..4)) {
        let messages = conversation(&first, &turns);
        let req = json!({"model": "claude-x", "max_tokens": 1000, "system": "sys", "messages": messages});
        let chat = request_to_chat(&serde_json::to_vec(&req).unwrap(), &ChatTarget::new("up")).unwrap();
        prop_assert!(chat.dropped.is_empty(), "{:?}", chat.dropped);
        let chat_json: Value = serde_json::from_slice(&chat.body).unwrap();
        // Thinking travels as reasoning_content.
        let reasoning: Vec<Value> = chat_json["messages"].as_array().unwrap().iter()
            .filter(|m| m["role"] == "assistant").map(|m| m.get("reasoning_content").cloned().unwrap_or(Value::Null)).collect();
        let expected: Vec<Value> = turns.iter().map(|t| t.thinking.clone().map_or(Value::Null, Value::from)).collect();
        prop_assert_eq!(reasoning, expected);

        let back = chat_request_to_messages(&chat.body, &MessagesTarget { model: "claude-x".into(), ..MessagesTarget::default() }).unwrap();
        let back: Value = serde_json::from_slice(&back.body).unwrap();
        prop_assert_eq!(&back["system"], &json!([{"type": "text", "text": "sys"}]));
        prop_assert_eq!(meaning(back["messages"].as_array().unwrap()), meaning(&messages));
    }
}

// ------------------------------------------------------------------ streams

#[derive(Clone, Debug)]
struct Answer {
    reasoning: String,
    text: String,
    tools: Vec<(String, String)>,
    finish: &'static str,
    usage: (u64, u64, u64),
    usage_in_choice: bool,
}

fn answer() -> impl Strategy<Value = Answer> {
    (
        "[a-z é世]{0,20}",
        "[a-z é世\n]{0,30}",
        prop::collection::vec(
            ("[A-Z][a-z]{1,5}", tool_input().prop_map(|v| v.to_string())),
            0..3,
        ),
        prop::sample::select(vec!["stop", "length", "tool_calls", "content_filter"]),
        (0u64..1000, 0u64..1000, 0u64..1000),
        any::<bool>(),
    )
        .prop_map(
            |(reasoning, text, tools, finish, (p, c, cached), usage_in_choice)| Answer {
                reasoning,
                text,
                tools,
                finish,
                usage: (p + cached, c, cached),
                usage_in_choice,
            },
        )
}

/// Cuts `s` at the char positions chosen by `cuts` (fractions in per-mille).
fn split(s: &str, cuts: &[u16]) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| chars.len() * usize::from(*c) / 1000)
        .collect();
    points.push(0);
    points.push(chars.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| chars[w[0]..w[1]].iter().collect())
        .collect()
}

fn usage_json(a: &Answer) -> Value {
    json!({"prompt_tokens": a.usage.0, "completion_tokens": a.usage.1, "total_tokens": a.usage.0 + a.usage.1, "prompt_tokens_details": {"cached_tokens": a.usage.2}})
}

/// The answer as chat stream payloads, its strings cut at `cuts`.
fn chat_stream(a: &Answer, cuts: &[u16]) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-p", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).to_string()
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in split(&a.reasoning, cuts) {
        out.push(chunk(json!({"reasoning_content": piece}), Value::Null));
    }
    for piece in split(&a.text, cuts) {
        out.push(chunk(json!({"content": piece}), Value::Null));
    }
    for (i, (name, args)) in a.tools.iter().enumerate() {
        out.push(chunk(json!({"tool_calls": [{"index": i, "id": format!("call_{i}"), "type": "function", "function": {"name": name, "arguments": ""}}]}), Value::Null));
        for piece in split(args, cuts) {
            out.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    if a.usage_in_choice {
        let mut last: Value = serde_json::from_str(&chunk(json!({}), json!(a.finish))).unwrap();
        last["choices"][0]["usage"] = usage_json(a);
        out.push(last.to_string());
    } else {
        out.push(chunk(json!({}), json!(a.finish)));
        out.push(json!({"id": "chatcmpl-p", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": [], "usage": usage_json(a)}).to_string());
    }
    out.push("[DONE]".into());
    out
}

fn chat_json(a: &Answer) -> Value {
    let calls: Vec<Value> = a
        .tools
        .iter()
        .enumerate()
        .map(|(i, (name, args))| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": name, "arguments": args}}))
        .collect();
    let mut message =
        json!({"role": "assistant", "content": a.text, "reasoning_content": a.reasoning});
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    json!({"id": "chatcmpl-p", "object": "chat.completion", "created": 1, "model": "up",
        "choices": [{"index": 0, "message": message, "finish_reason": a.finish}], "usage": usage_json(a)})
}

/// Parses Anthropic SSE bytes into (event, data) pairs.
fn events(bytes: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.ends_with("\n\n"));
    text.split_terminator("\n\n")
        .map(|frame| {
            let (event, data) = frame.split_once('\n').unwrap();
            let event = event.strip_prefix("event: ").unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], event, "the event name is the data's type");
            (event.to_owned(), data)
        })
        .collect()
}

/// Checks the stream is well formed and builds the message it describes, as the SDK's accumulator does.
fn accumulate(events: &[(String, Value)]) -> Value {
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("message_start"));
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("message_stop"));
    let mut message = events[0].1["message"].clone();
    let mut open: Option<u64> = None;
    let mut next = 0u64;
    let mut partial = String::new();
    let mut saw_delta = false;
    for (name, data) in &events[1..] {
        assert!(
            !saw_delta || name == "message_stop",
            "only message_stop after message_delta"
        );
        match name.as_str() {
            "ping" => {}
            "content_block_start" => {
                assert_eq!(open, None, "a block starts while another is open");
                assert_eq!(data["index"], next, "indices count up from 0");
                open = Some(next);
                next += 1;
                message["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(data["content_block"].clone());
                partial.clear();
            }
            "content_block_delta" => {
                assert_eq!(
                    Some(data["index"].as_u64().unwrap()),
                    open,
                    "delta for the open block"
                );
                let block = message["content"]
                    .as_array_mut()
                    .unwrap()
                    .last_mut()
                    .unwrap();
                let d = &data["delta"];
                match (block["type"].as_str().unwrap(), d["type"].as_str().unwrap()) {
                    ("text", "text_delta") => {
                        block["text"] = json!(format!(
                            "{}{}",
                            block["text"].as_str().unwrap(),
                            d["text"].as_str().unwrap()
                        ))
                    }
                    ("thinking", "thinking_delta") => {
                        block["thinking"] = json!(format!(
                            "{}{}",
                            block["thinking"].as_str().unwrap(),
                            d["thinking"].as_str().unwrap()
                        ))
                    }
                    ("tool_use", "input_json_delta") => {
                        partial.push_str(d["partial_json"].as_str().unwrap())
                    }
                    (b, d) => panic!("{d} in a {b} block"),
                }
            }
            "content_block_stop" => {
                assert_eq!(Some(data["index"].as_u64().unwrap()), open);
                let block = message["content"]
                    .as_array_mut()
                    .unwrap()
                    .last_mut()
                    .unwrap();
                if block["type"] == "tool_use" && !partial.is_empty() {
                    block["input"] = serde_json::from_str(&partial).unwrap();
                }
                open = None;
            }
            "message_delta" => {
                assert_eq!(open, None, "every block stopped before message_delta");
                message["stop_reason"] = data["delta"]["stop_reason"].clone();
                message["stop_sequence"] = data["delta"]["stop_sequence"].clone();
                for (k, v) in data["usage"].as_object().unwrap() {
                    message["usage"][k] = v.clone();
                }
                saw_delta = true;
            }
            "message_stop" => assert!(saw_delta),
            other => panic!("unexpected event {other}"),
        }
    }
    message
}

fn run(payloads: &[String]) -> Vec<u8> {
    let ctx = AnswerContext {
        client_model: "claude-x".into(),
        ..AnswerContext::default()
    };
    let mut s = ChatToMessagesStream::new(&ctx);
    let mut out = Vec::new();
    for p in payloads {
        s.push(p.as_bytes(), &mut out);
    }
    s.finish(&mut out);
    assert!(s.is_done());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn streams_are_well_formed_and_agree_with_the_json_answer(a in answer(), cuts1 in prop::collection::vec(0u16..1000, 0..6), cuts2 in prop::collection::vec(0u16..1000, 0..6)) {
        let one = accumulate(&events(&run(&chat_stream(&a, &cuts1))));
        let two = accumulate(&events(&run(&chat_stream(&a, &cuts2))));
        prop_assert_eq!(&one, &two);
        let ctx = AnswerContext { client_model: "claude-x".into(), ..AnswerContext::default() };
        let whole: Value = serde_json::from_slice(&chat_response_to_messages(chat_json(&a).to_string().as_bytes(), &ctx).unwrap()).unwrap();
        prop_assert_eq!(&one, &whole);
    }

    #[test]
    fn anthropic_stream_back_to_chat_gives_the_answer(a in answer(), cuts in prop::collection::vec(0u16..1000, 0..6)) {
        let anthropic = events(&run(&chat_stream(&a, &cuts)));
        let ctx = AnswerContext { client_model: "gpt-x".into(), include_usage: true, ..AnswerContext::default() };
        let mut back = MessagesToChatStream::new(&ctx);
        let mut out = Vec::new();
        for (name, data) in &anthropic {
            back.push(name, data.to_string().as_bytes(), &mut out);
        }
        back.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        prop_assert!(text.ends_with("data: [DONE]\n\n"));
        let mut reasoning = String::new();
        let mut content = String::new();
        let mut tools: Vec<(String, String)> = Vec::new();
        let mut finish = Value::Null;
        let mut usage = Value::Null;
        for frame in text.split_terminator("\n\n") {
            let data = frame.strip_prefix("data: ").unwrap();
            if data == "[DONE]" { continue; }
            let chunk: Value = serde_json::from_str(data).unwrap();
            if let Some(u) = chunk.get("usage") { usage = u.clone(); }
            let Some(choice) = chunk["choices"].get(0) else { continue };
            let d = &choice["delta"];
            if let Some(r) = d["reasoning_content"].as_str() { reasoning.push_str(r); }
            if let Some(c) = d["content"].as_str() { content.push_str(c); }
            for call in d["tool_calls"].as_array().into_iter().flatten() {
                let i = usize::try_from(call["index"].as_u64().unwrap()).unwrap();
                if i == tools.len() { tools.push((call["function"]["name"].as_str().unwrap().to_owned(), String::new())); }
                tools[i].1.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
            if !choice["finish_reason"].is_null() { finish = choice["finish_reason"].clone(); }
        }
        prop_assert_eq!(reasoning, a.reasoning.clone());
        prop_assert_eq!(content, a.text.clone());
        prop_assert_eq!(tools.len(), a.tools.len());
        for ((n1, a1), (n2, a2)) in tools.iter().zip(&a.tools) {
            prop_assert_eq!(n1, n2);
            prop_assert_eq!(serde_json::from_str::<Value>(a1).unwrap(), serde_json::from_str::<Value>(a2).unwrap());
        }
        let expected_finish = match a.finish {
            "length" => "length",
            "content_filter" => "content_filter",
            _ if !a.tools.is_empty() || a.finish == "tool_calls" => "tool_calls",
            _ => "stop",
        };
        prop_assert_eq!(finish, json!(expected_finish));
        prop_assert_eq!(usage, usage_json(&a));
    }
}
