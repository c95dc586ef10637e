//! Chat completions request → Anthropic Messages request (a chat client in front of an Anthropic-native
//! provider).
//!
//! From openai/openai-python `src/openai/types/chat/completion_create_params.py` to anthropics/anthropic-sdk-python
//! `src/anthropic/types/message_create_params.py`.

use serde_json::{Map, Value, json};

use super::response::tool_result_content;
use super::{
    DEFAULT_MAX_TOKENS, Dropped, MessagesTarget, TranslateError, Translated, parse_object, to_bytes,
};

/// Translates a chat completions request body into an Anthropic Messages request for `target`.
///
/// Choices where the formats leave room:
/// - `max_tokens` (Anthropic requires it): the request's `max_completion_tokens` or `max_tokens`, else the
///   target's [`MessagesTarget::max_output_tokens`], else [`DEFAULT_MAX_TOKENS`]; capped at the target's maximum.
/// - The leading `system`/`developer` messages become the top-level `system` text blocks; later ones stay in
///   place as `role: "system"` messages (the Messages API takes those, see `system_message_param.py`).
/// - `tool` messages become `tool_result` blocks of one user turn (the content prefixed with
///   [`super::TOOL_ERROR_PREFIX`] becomes `is_error: true`); a user message right after them joins that turn.
/// - An assistant's `reasoning_content` is dropped (and counted): Anthropic rejects thinking blocks without
///   their signature.
/// - `temperature` is clamped to Anthropic's 0–1 range; `reasoning_effort` becomes `thinking` with a budget
///   (minimal/low 2048, medium 8192, high 16384, more 32768, kept under `max_tokens`) when
///   [`MessagesTarget::thinking`], and then `temperature` and `top_k` are dropped (Anthropic refuses them with
///   thinking); `none` becomes `thinking: disabled`.
pub fn chat_request_to_messages(
    body: &[u8],
    target: &MessagesTarget,
) -> Result<Translated, TranslateError> {
    let req = parse_object(body)?;
    let mut dropped = Dropped::default();
    let client_model = match req.get("model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(TranslateError::invalid("model", "expected a string")),
        None => return Err(TranslateError::Missing("model")),
    };
    let Some(Value::Array(raw_messages)) = req.get("messages") else {
        return Err(TranslateError::Missing("messages"));
    };
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = stream
        && req
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);

    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<Value> = Vec::with_capacity(raw_messages.len());
    for (i, msg) in raw_messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = msg
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::invalid(format!("{at}.role"), "expected a string"))?;
        let content = msg.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => {
                let text = text_of(content);
                if messages.is_empty() {
                    system.push(json!({"type": "text", "text": text}));
                } else {
                    messages.push(json!({"role": "system", "content": text}));
                }
            }
            "user" => {
                let blocks = user_blocks(content, &at, &mut dropped)?;
                push_user(&mut messages, blocks);
            }
            "assistant" => {
                if let Some(m) = assistant_message(msg, &mut dropped) {
                    messages.push(m);
                }
            }
            "tool" => {
                let id = msg
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let (text, is_error) = tool_result_content(&text_of(content));
                let mut block = json!({"type": "tool_result", "tool_use_id": id, "content": text});
                if is_error && let Some(obj) = block.as_object_mut() {
                    obj.insert("is_error".into(), Value::Bool(true));
                }
                push_user(&mut messages, vec![block]);
            }
            "function" => dropped.block("function_message"),
            _ => {
                return Err(TranslateError::invalid(
                    format!("{at}.role"),
                    "unknown role",
                ));
            }
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), Value::String(target.model.clone()));
    let requested = req
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| req.get("max_tokens").and_then(Value::as_u64));
    let mut max_tokens = requested
        .or(target.max_output_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    if let Some(cap) = target.max_output_tokens {
        max_tokens = max_tokens.min(cap);
    }
    out.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(Value::Array(tools)) = req.get("tools") {
        let mut list = Vec::with_capacity(tools.len());
        for t in tools {
            if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
                dropped.block("tool");
                continue;
            }
            let f = t.get("function").unwrap_or(&Value::Null);
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                return Err(TranslateError::invalid(
                    "tools[].function.name",
                    "expected a string",
                ));
            };
            let mut tool = Map::new();
            tool.insert("name".into(), json!(name));
            if let Some(d) = f.get("description").and_then(Value::as_str) {
                tool.insert("description".into(), json!(d));
            }
            let schema = f
                .get("parameters")
                .filter(|p| p.is_object())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            tool.insert("input_schema".into(), schema);
            if let Some(strict) = f.get("strict").filter(|s| s.is_boolean()) {
                tool.insert("strict".into(), strict.clone());
            }
            list.push(Value::Object(tool));
        }
        if !list.is_empty() {
            out.insert("tools".into(), Value::Array(list));
        }
    }
    let parallel_off = req.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    let mut choice = match req.get("tool_choice") {
        Some(Value::String(s)) => match s.as_str() {
            "required" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            _ => Some(json!({"type": "auto"})),
        },
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| json!({"type": "tool", "name": name})),
        _ => None,
    };
    if parallel_off && out.contains_key("tools") {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none"
            && let Some(obj) = c.as_object_mut()
        {
            obj.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }

    let mut thinking_on = false;
    if let Some(effort) = req.get("reasoning_effort").and_then(Value::as_str) {
        if !target.thinking {
            dropped.field("reasoning_effort");
        } else if effort == "none" {
            out.insert("thinking".into(), json!({"type": "disabled"}));
        } else {
            let budget: u64 = match effort {
                "minimal" | "low" => 2048,
                "medium" => 8192,
                "high" => 16384,
                _ => 32768,
            };
            let budget = budget.min(max_tokens.saturating_sub(1));
            if budget >= 1024 {
                out.insert(
                    "thinking".into(),
                    json!({"type": "enabled", "budget_tokens": budget}),
                );
                thinking_on = true;
            } else {
                dropped.field("reasoning_effort");
            }
        }
    }
    if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
        if thinking_on {
            dropped.field("temperature");
        } else {
            out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
        }
    }
    if let Some(p) = req.get("top_p").filter(|p| p.is_number()) {
        out.insert("top_p".into(), p.clone());
    }
    if let Some(k) = req.get("top_k").filter(|k| k.is_number()) {
        if thinking_on {
            dropped.field("top_k");
        } else {
            out.insert("top_k".into(), k.clone());
        }
    }
    let stop_sequences: Vec<String> = match req.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if !stop_sequences.is_empty() {
        out.insert("stop_sequences".into(), json!(stop_sequences));
    }
    if let Some(user) = req
        .get("user")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    match req.get("response_format") {
        Some(f) if f.get("type").and_then(Value::as_str) == Some("json_schema") => {
            match f.pointer("/json_schema/schema") {
                Some(schema) => {
                    out.insert(
                        "output_config".into(),
                        json!({"format": {"type": "json_schema", "schema": schema}}),
                    );
                }
                None => dropped.field("response_format"),
            }
        }
        Some(f) if f.get("type").and_then(Value::as_str) != Some("text") && !f.is_null() => {
            dropped.field("response_format")
        }
        _ => {}
    }
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    const HANDLED: &[&str] = &[
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "user",
        "response_format",
        "stream",
        "stream_options",
    ];
    for key in req.keys() {
        if !HANDLED.contains(&key.as_str()) && !req.get(key).is_some_and(Value::is_null) {
            dropped.field(key);
        }
    }

    Ok(Translated {
        body: to_bytes(&Value::Object(out)),
        stream,
        client_model,
        dropped,
        stop_sequences,
        include_usage,
    })
}

/// The text of a chat message content: a string, or its text parts joined by `"\n"`.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn user_blocks(
    content: &Value,
    at: &str,
    dropped: &mut Dropped,
) -> Result<Vec<Value>, TranslateError> {
    match content {
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let mut b = json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or_default()});
                        if let (Some(cc), Some(obj)) = (p.get("cache_control"), b.as_object_mut()) {
                            obj.insert("cache_control".into(), cc.clone());
                        }
                        blocks.push(b);
                    }
                    Some("image_url") => {
                        let url = p
                            .pointer("/image_url/url")
                            .or_else(|| p.get("image_url"))
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        blocks.push(image_block(url));
                    }
                    Some(kind) => dropped.block(kind),
                    None => dropped.block("unknown"),
                }
            }
            Ok(blocks)
        }
        Value::Null => Ok(Vec::new()),
        _ => Err(TranslateError::invalid(
            format!("{at}.content"),
            "expected a string or an array",
        )),
    }
}

/// An Anthropic image block for a chat `image_url`: a `data:` URL becomes a base64 source.
fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media, data)) = rest.split_once(";base64,")
    {
        return json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}});
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

/// Appends user blocks: to the previous user turn when it holds tool results (Anthropic wants every result of
/// one assistant turn in the next user turn, results first), else as a new user message.
fn push_user(messages: &mut Vec<Value>, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut() {
        let joins = last["role"] == "user"
            && last["content"]
                .as_array()
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
        if joins && let Some(content) = last.get_mut("content").and_then(Value::as_array_mut) {
            content.extend(blocks);
            return;
        }
    }
    messages.push(json!({"role": "user", "content": blocks}));
}

fn assistant_message(msg: &Value, dropped: &mut Dropped) -> Option<Value> {
    let mut blocks = Vec::new();
    let text = text_of(msg.get("content").unwrap_or(&Value::Null));
    if msg
        .get("reasoning_content")
        .or_else(|| msg.get("reasoning"))
        .and_then(Value::as_str)
        .is_some_and(|r| !r.is_empty())
    {
        dropped.block("reasoning_content");
    }
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    if let Some(Value::Array(calls)) = msg.get("tool_calls") {
        for call in calls {
            let args = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or_default();
            blocks.push(json!({
                "type": "tool_use",
                "id": call.get("id").and_then(Value::as_str).unwrap_or_default(),
                "name": call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default(),
                "input": super::arguments_to_input(args),
            }));
        }
    }
    (!blocks.is_empty()).then(|| json!({"role": "assistant", "content": blocks}))
}
