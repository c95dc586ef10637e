//! Whole (non-streamed) answers: chat completion → Anthropic message, and back.
//!
//! Shapes: openai/openai-python `src/openai/types/chat/chat_completion.py`, anthropics/anthropic-sdk-python
//! `src/anthropic/types/message.py`.

use serde_json::{Map, Value, json};

use super::{
    AnswerContext, ChatUsage, MessagesUsage, TOOL_ERROR_PREFIX, TranslateError, arguments_to_input,
    parse_object, to_bytes,
};

/// `msg_…` for a chat completion id (`chatcmpl-X` → `msg_X`).
pub(crate) fn message_id(chat_id: &str) -> String {
    let core = chat_id.strip_prefix("chatcmpl-").unwrap_or(chat_id);
    if core.is_empty() {
        "msg_proxy".to_owned()
    } else {
        format!("msg_{core}")
    }
}

/// `chatcmpl-…` for an Anthropic message id (`msg_X` → `chatcmpl-X`).
pub(crate) fn chat_id(message_id: &str) -> String {
    let core = message_id.strip_prefix("msg_").unwrap_or(message_id);
    format!("chatcmpl-{core}")
}

/// The stop sequence a provider says it stopped on: vLLM puts the matched string in the choice's `stop_reason`,
/// SGLang in `matched_stop`. Counted only when it is one of the request's stop sequences.
pub(crate) fn matched_stop<'a>(choice: &'a Value, stop_sequences: &[String]) -> Option<&'a str> {
    ["stop_reason", "matched_stop"]
        .iter()
        .filter_map(|k| choice.get(*k).and_then(Value::as_str))
        .find(|s| stop_sequences.iter().any(|q| q == s))
}

/// Anthropic's `(stop_reason, stop_sequence)` for a chat `finish_reason`.
///
/// `stop` is `end_turn`, or `stop_sequence` when the provider named which stop sequence matched (see
/// [`matched_stop`]; OpenAI, Kimi and DeepSeek do not say, so their stops read as `end_turn`); `stop` with tool
/// calls in the answer is `tool_use` (some providers say `stop` there).
pub(crate) fn stop_reason(
    finish: Option<&str>,
    matched: Option<&str>,
    tool_calls: bool,
) -> (&'static str, Option<String>) {
    match finish {
        Some("length") => ("max_tokens", None),
        Some("tool_calls" | "function_call") => ("tool_use", None),
        Some("content_filter") => ("refusal", None),
        _ if tool_calls => ("tool_use", None),
        _ => match matched {
            Some(s) => ("stop_sequence", Some(s.to_owned())),
            None => ("end_turn", None),
        },
    }
}

/// The reasoning text of a chat message or delta: `reasoning_content` (Kimi, DeepSeek) or `reasoning`
/// (OpenRouter, some vLLM builds).
pub(crate) fn reasoning_of(message: &Value) -> Option<&str> {
    message
        .get("reasoning_content")
        .and_then(Value::as_str)
        .or_else(|| message.get("reasoning").and_then(Value::as_str))
}

/// Translates a chat completion JSON answer into an Anthropic message.
///
/// Content order: a `thinking` block (from `reasoning_content`, with an empty `signature`: there is none to
/// give), the `text`, then one `tool_use` per tool call (its `arguments` parsed into `input`). Only the first
/// choice is read.
pub fn chat_response_to_messages(
    body: &[u8],
    ctx: &AnswerContext,
) -> Result<Vec<u8>, TranslateError> {
    let resp = parse_object(body)?;
    let id = resp.get("id").and_then(Value::as_str).unwrap_or_default();
    let choice = resp
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or(TranslateError::Missing("choices"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(r) = reasoning_of(message).filter(|r| !r.is_empty()) {
        content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
    }
    if let Some(t) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    let mut tool_calls = false;
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for (i, call) in calls.iter().enumerate() {
            tool_calls = true;
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("toolu_{i}"), str::to_owned);
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let args = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or_default();
            content.push(json!({"type": "tool_use", "id": id, "name": name, "input": arguments_to_input(args)}));
        }
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let (reason, sequence) = stop_reason(
        finish,
        matched_stop(choice, &ctx.stop_sequences),
        tool_calls,
    );
    // Kimi may report usage inside the choice.
    let usage = resp
        .get("usage")
        .or_else(|| choice.get("usage"))
        .and_then(ChatUsage::from_value)
        .unwrap_or_default();
    let out = json!({
        "id": message_id(id),
        "type": "message",
        "role": "assistant",
        "model": ctx.client_model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage.to_messages(),
    });
    Ok(to_bytes(&out))
}

/// A chat `finish_reason` for an Anthropic `stop_reason`.
pub(crate) fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and none given.
        _ => "stop",
    }
}

/// Translates an Anthropic message JSON answer into a chat completion.
///
/// Text blocks are joined (no separator) into `content` (`null` when there is none, as OpenAI does with tool
/// calls), thinking blocks into `reasoning_content`, `tool_use` blocks into `tool_calls`; a `tool_use` input
/// is serialized compactly. `redacted_thinking` and server tool blocks have no chat form and are left out.
pub fn messages_response_to_chat(
    body: &[u8],
    ctx: &AnswerContext,
) -> Result<Vec<u8>, TranslateError> {
    let resp = parse_object(body)?;
    let id = resp.get("id").and_then(Value::as_str).unwrap_or_default();
    let Some(Value::Array(blocks)) = resp.get("content") else {
        return Err(TranslateError::Missing("content"));
    };
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default())
            }
            Some("thinking") => reasoning.push_str(
                b.get("thinking")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").and_then(Value::as_str).unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": b.get("name").and_then(Value::as_str).unwrap_or_default(),
                    "arguments": b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), Value::String(reasoning));
    }
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let mut usage = MessagesUsage::default();
    if let Some(u) = resp.get("usage") {
        usage.update(u);
    }
    let out = json!({
        "id": chat_id(id),
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.client_model,
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "finish_reason": finish_reason(resp.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage.to_chat(),
    });
    Ok(to_bytes(&out))
}

/// A chat `tool` message's content as a `tool_result`'s `(content, is_error)`: the [`TOOL_ERROR_PREFIX`] put
/// there by [`super::request_to_chat`] marks an error.
pub(crate) fn tool_result_content(text: &str) -> (String, bool) {
    match text.strip_prefix(TOOL_ERROR_PREFIX) {
        Some(rest) => (rest.to_owned(), true),
        None => (text.to_owned(), false),
    }
}
