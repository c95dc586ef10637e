//! Anthropic Messages request → chat completions request.
//!
//! Field by field from anthropics/anthropic-sdk-python `src/anthropic/types/message_create_params.py` (and the
//! `*_param.py` files it names) to openai/openai-python `src/openai/types/chat/completion_create_params.py`.

use serde_json::{Map, Value, json};

use super::{
    ChatTarget, Dropped, TOOL_ERROR_PREFIX, TranslateError, Translated, parse_object, to_bytes,
};

/// Top-level request fields with no chat equivalent: dropped and named in [`Dropped::fields`].
/// (`context_management`: Claude Code's context editing; `container`, `mcp_servers`: server-side tools; the rest
/// are Anthropic service options.)
const UNSUPPORTED_FIELDS: &[&str] = &[
    "context_management",
    "container",
    "mcp_servers",
    "service_tier",
    "inference_geo",
    "speed",
    "diagnostics",
    "betas",
];

/// Translates an Anthropic Messages request body into a chat completions request for `target`.
///
/// Choices where the formats leave room:
/// - `system` (string or text blocks) becomes one leading `system` message, blocks joined by `"\n\n"` (or kept as
///   text parts with their `cache_control` when [`ChatTarget::cache_control`]); `role: "system"` messages inside
///   `messages` stay system messages in place.
/// - A `tool_result` becomes a `tool` message (before the rest of its user turn, as chat wants them right after
///   the assistant's `tool_calls`); its text blocks are joined by `"\n"`; `is_error: true` is kept visible as the
///   prefix [`TOOL_ERROR_PREFIX`]; images inside a tool result are dropped (chat tool messages carry text).
/// - `thinking` blocks become the assistant's `reasoning_content` (joined by `"\n"`); their signatures mean
///   nothing to another provider and are not sent; `redacted_thinking` (encrypted) is dropped and counted.
/// - Assistant text blocks are joined by `"\n"` into one string (not every provider takes parts for assistants).
/// - `metadata.user_id` → `user`: for Claude Code's JSON string, its `account_uuid` (else `device_id`), the
///   stable user and not the session; a plain string as it is.
/// - `thinking`/`output_config.effort` → `reasoning_effort` when [`ChatTarget::reasoning_effort`]: the effort if
///   given (`xhigh`/`max` lowered to `high`), else for `enabled` from `budget_tokens` (<4096 low, <16384 medium,
///   else high); `adaptive` without effort and `disabled` leave the provider's default (and `disabled` is
///   counted as dropped).
pub fn request_to_chat(body: &[u8], target: &ChatTarget) -> Result<Translated, TranslateError> {
    let req = parse_object(body)?;
    let mut dropped = Dropped::default();
    let client_model = match req.get("model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(TranslateError::invalid("model", "expected a string")),
        None => return Err(TranslateError::Missing("model")),
    };
    let raw_messages = match req.get("messages") {
        Some(Value::Array(m)) => m,
        Some(_) => return Err(TranslateError::invalid("messages", "expected an array")),
        None => return Err(TranslateError::Missing("messages")),
    };
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);

    let mut out = Map::new();
    out.insert("model".into(), Value::String(target.model.clone()));

    let mut messages = Vec::with_capacity(raw_messages.len() + 1);
    if let Some(system) = req.get("system")
        && let Some(msg) = system_message(system, "system", target, &mut dropped)?
    {
        messages.push(msg);
    }
    for (i, msg) in raw_messages.iter().enumerate() {
        translate_message(msg, i, target, &mut dropped, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(tools) = req.get("tools") {
        let tools = translate_tools(tools, target, &mut dropped)?;
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = req.get("tool_choice") {
        translate_tool_choice(choice, &mut out)?;
    }

    let mut max_tokens = req.get("max_tokens").and_then(Value::as_u64);
    if let (Some(m), Some(cap)) = (max_tokens, target.max_output_tokens) {
        max_tokens = Some(m.min(cap));
    }
    if let Some(m) = max_tokens {
        out.insert("max_tokens".into(), json!(m));
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(v) = req.get("top_k").filter(|v| v.is_number()) {
        if target.top_k {
            out.insert("top_k".into(), v.clone());
        } else {
            dropped.field("top_k");
        }
    }
    let stop_sequences: Vec<String> = match req.get("stop_sequences") {
        Some(Value::Array(seqs)) => seqs
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if !stop_sequences.is_empty() {
        out.insert("stop".into(), json!(stop_sequences));
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
        .and_then(chat_user)
    {
        out.insert("user".into(), Value::String(user));
    }

    translate_reasoning(&req, target, &mut dropped, &mut out);
    if let Some(format) = req
        .get("output_config")
        .and_then(|o| o.get("format"))
        .filter(|f| !f.is_null())
    {
        match format.get("schema") {
            Some(schema) if format.get("type").and_then(Value::as_str) == Some("json_schema") => {
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}}),
                );
            }
            _ => dropped.field("output_config.format"),
        }
    }

    if stream {
        out.insert("stream".into(), Value::Bool(true));
        // Without it the answer carries no usage to translate into `message_delta`.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }

    if req.get("cache_control").is_some_and(|c| !c.is_null()) {
        dropped.cache_control += 1;
    }
    for field in UNSUPPORTED_FIELDS {
        if req.get(*field).is_some_and(|v| !v.is_null()) {
            dropped.field(field);
        }
    }
    const HANDLED: &[&str] = &[
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "stream",
        "thinking",
        "output_config",
        "cache_control",
    ];
    for key in req.keys() {
        if !HANDLED.contains(&key.as_str()) && !UNSUPPORTED_FIELDS.contains(&key.as_str()) {
            dropped.field(key);
        }
    }

    Ok(Translated {
        body: to_bytes(&Value::Object(out)),
        stream,
        client_model,
        dropped,
        stop_sequences,
        include_usage: false,
    })
}

fn translate_reasoning(
    req: &Map<String, Value>,
    target: &ChatTarget,
    dropped: &mut Dropped,
    out: &mut Map<String, Value>,
) {
    let effort = req
        .get("output_config")
        .and_then(|o| o.get("effort"))
        .and_then(Value::as_str)
        .map(|e| match e {
            "xhigh" | "max" => "high",
            other => other,
        });
    let thinking = req.get("thinking").filter(|t| !t.is_null());
    let kind = thinking.and_then(|t| t.get("type")).and_then(Value::as_str);
    let from_budget = || {
        let budget = thinking?.get("budget_tokens")?.as_u64()?;
        Some(if budget < 4096 {
            "low"
        } else if budget < 16384 {
            "medium"
        } else {
            "high"
        })
    };
    let chosen = match kind {
        Some("disabled") => {
            dropped.field("thinking");
            None
        }
        Some("enabled") => effort.or_else(from_budget),
        _ => effort,
    };
    if !target.reasoning_effort {
        if effort.is_some() {
            dropped.field("output_config.effort");
        }
        if thinking.is_some() {
            dropped.field("thinking");
        }
        return;
    }
    if let Some(e) = chosen {
        out.insert("reasoning_effort".into(), Value::String(e.to_owned()));
    }
}

/// The `user` sent upstream for Anthropic's `metadata.user_id`.
fn chat_user(user_id: &str) -> Option<String> {
    if user_id.is_empty() {
        return None;
    }
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(user_id) {
        return ["account_uuid", "device_id", "session_id"]
            .iter()
            .find_map(|k| {
                obj.get(*k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .map(str::to_owned);
    }
    Some(user_id.to_owned())
}

/// The client's session id in an Anthropic `metadata.user_id`: the `session_id` of Claude Code's JSON string
/// (`{"device_id":…,"account_uuid":…,"session_id":…}`), the part after `_session_` of its older
/// `user_<hash>_account_<uuid>_session_<uuid>` form, or else the whole string.
pub fn session_id_from_user_id(user_id: &str) -> Option<String> {
    let trimmed = user_id.trim();
    if trimmed.is_empty() {
        return None;
    }
    if trimmed.starts_with('{')
        && let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(trimmed)
    {
        return obj
            .get("session_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
    }
    if let Some((_, session)) = trimmed.rsplit_once("_session_")
        && !session.is_empty()
    {
        return Some(session.to_owned());
    }
    Some(trimmed.to_owned())
}

/// The client's session id in an Anthropic request body (from `metadata.user_id`, see
/// [`session_id_from_user_id`]), without translating the rest.
pub fn client_session_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Req {
        metadata: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        user_id: Option<String>,
    }
    let req: Req = serde_json::from_slice(body).ok()?;
    session_id_from_user_id(&req.metadata?.user_id?)
}

fn count_cache_control(block: &Value, dropped: &mut Dropped) {
    if block.get("cache_control").is_some_and(|c| !c.is_null()) {
        dropped.cache_control += 1;
    }
}

/// A system prompt (string or text blocks) as one chat message of `role`.
fn system_message(
    system: &Value,
    role: &str,
    target: &ChatTarget,
    dropped: &mut Dropped,
) -> Result<Option<Value>, TranslateError> {
    match system {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(json!({"role": role, "content": s}))),
        Value::Array(blocks) => {
            let marked = blocks
                .iter()
                .any(|b| b.get("cache_control").is_some_and(|c| !c.is_null()));
            if target.cache_control && marked {
                let parts: Vec<Value> = blocks
                    .iter()
                    .filter_map(|b| {
                        let text = b.get("text")?.as_str()?;
                        let mut part = json!({"type": "text", "text": text});
                        if let (Some(cc), Some(obj)) =
                            (b.get("cache_control"), part.as_object_mut())
                        {
                            obj.insert("cache_control".into(), cc.clone());
                        }
                        Some(part)
                    })
                    .collect();
                return Ok(Some(json!({"role": role, "content": parts})));
            }
            let mut texts = Vec::with_capacity(blocks.len());
            for b in blocks {
                count_cache_control(b, dropped);
                match b.get("text").and_then(Value::as_str) {
                    Some(t) => texts.push(t),
                    None => {
                        dropped.block(b.get("type").and_then(Value::as_str).unwrap_or("unknown"))
                    }
                }
            }
            Ok(Some(json!({"role": role, "content": texts.join("\n\n")})))
        }
        _ => Err(TranslateError::invalid(
            "system",
            "expected a string or an array of text blocks",
        )),
    }
}

/// A content block's `cache_control`, kept on the chat part when the target honours it.
fn with_cache_control(
    mut part: Value,
    block: &Value,
    target: &ChatTarget,
    dropped: &mut Dropped,
) -> Value {
    if let Some(cc) = block.get("cache_control").filter(|c| !c.is_null()) {
        if target.cache_control {
            if let Some(obj) = part.as_object_mut() {
                obj.insert("cache_control".into(), cc.clone());
            }
        } else {
            dropped.cache_control += 1;
        }
    }
    part
}

fn image_part(block: &Value, at: &str) -> Result<Value, TranslateError> {
    let source = block
        .get("source")
        .ok_or_else(|| TranslateError::invalid(format!("{at}.source"), "field required"))?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png");
            let data = source
                .get("data")
                .and_then(Value::as_str)
                .unwrap_or_default();
            format!("data:{media};base64,{data}")
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => {
            return Err(TranslateError::invalid(
                format!("{at}.source"),
                "expected a base64 or url image source",
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// The text of a `tool_result`'s content (a string or blocks); images and other blocks are dropped.
fn tool_result_text(content: Option<&Value>, dropped: &mut Dropped) -> String {
    match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for b in blocks {
                count_cache_control(b, dropped);
                match (
                    b.get("type").and_then(Value::as_str),
                    b.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => texts.push(t),
                    (kind, _) => {
                        dropped.block(&format!("tool_result.{}", kind.unwrap_or("unknown")))
                    }
                }
            }
            texts.join("\n")
        }
        Some(other) => other.to_string(),
    }
}

fn translate_message(
    msg: &Value,
    i: usize,
    target: &ChatTarget,
    dropped: &mut Dropped,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let at = format!("messages[{i}]");
    let role = msg
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::invalid(format!("{at}.role"), "expected a string"))?;
    let content = msg
        .get("content")
        .ok_or_else(|| TranslateError::invalid(format!("{at}.content"), "field required"))?;
    match role {
        "system" => {
            if let Some(m) = system_message(content, "system", target, dropped)? {
                out.push(m);
            }
            Ok(())
        }
        "user" => translate_user(content, &at, target, dropped, out),
        "assistant" => translate_assistant(content, &at, target, dropped, out),
        _ => Err(TranslateError::invalid(
            format!("{at}.role"),
            "expected user, assistant or system",
        )),
    }
}

fn translate_user(
    content: &Value,
    at: &str,
    target: &ChatTarget,
    dropped: &mut Dropped,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(TranslateError::invalid(
                format!("{at}.content"),
                "expected a string or an array",
            ));
        }
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for (j, b) in blocks.iter().enumerate() {
        let bat = format!("{at}.content[{j}]");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = b.get("text").and_then(Value::as_str).unwrap_or_default();
                parts.push(with_cache_control(
                    json!({"type": "text", "text": text}),
                    b,
                    target,
                    dropped,
                ));
            }
            Some("image") => {
                parts.push(with_cache_control(image_part(b, &bat)?, b, target, dropped))
            }
            Some("tool_result") => {
                count_cache_control(b, dropped);
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let mut text = tool_result_text(b.get("content"), dropped);
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text.insert_str(0, TOOL_ERROR_PREFIX);
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            Some(kind) => dropped.block(kind),
            None => {
                return Err(TranslateError::invalid(
                    format!("{bat}.type"),
                    "expected a string",
                ));
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let single_text =
        parts.len() == 1 && parts[0].get("cache_control").is_none() && parts[0]["type"] == "text";
    let content = if single_text {
        parts[0]["text"].clone()
    } else {
        Value::Array(parts)
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn translate_assistant(
    content: &Value,
    at: &str,
    target: &ChatTarget,
    dropped: &mut Dropped,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "assistant", "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(TranslateError::invalid(
                format!("{at}.content"),
                "expected a string or an array",
            ));
        }
    };
    let mut texts: Vec<&str> = Vec::new();
    let mut reasoning: Vec<&str> = Vec::new();
    let mut calls = Vec::new();
    for b in blocks {
        count_cache_control(b, dropped);
        match b.get("type").and_then(Value::as_str) {
            Some("text") => texts.push(b.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking") => {
                let t = b
                    .get("thinking")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if target.reasoning_content {
                    reasoning.push(t);
                } else {
                    dropped.block("thinking");
                }
            }
            Some("tool_use") => {
                let id = b.get("id").and_then(Value::as_str).unwrap_or_default();
                let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                let arguments = match input {
                    // Our own wrapping of arguments that were not a JSON object (`arguments_to_input`).
                    Value::Object(ref o)
                        if o.len() == 1
                            && o.get("_raw_arguments").is_some_and(Value::is_string) =>
                    {
                        o.get("_raw_arguments")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    }
                    other => other.to_string(),
                };
                calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}));
            }
            Some(kind) => dropped.block(kind),
            None => dropped.block("unknown"),
        }
    }
    let mut msg = Map::new();
    msg.insert("role".into(), json!("assistant"));
    msg.insert("content".into(), Value::String(texts.join("\n")));
    if !reasoning.is_empty() {
        msg.insert(
            "reasoning_content".into(),
            Value::String(reasoning.join("\n")),
        );
    }
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    out.push(Value::Object(msg));
    Ok(())
}

fn translate_tools(
    tools: &Value,
    target: &ChatTarget,
    dropped: &mut Dropped,
) -> Result<Vec<Value>, TranslateError> {
    let Value::Array(tools) = tools else {
        return Err(TranslateError::invalid("tools", "expected an array"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        // Custom tools have no `type` or `"custom"`; the others (`web_search_…`, `bash_…`, `text_editor_…`) are
        // Anthropic's own and have no schema another model could follow.
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(kind) => {
                dropped.block(&format!("tool.{kind}"));
                continue;
            }
        }
        let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
            TranslateError::invalid(format!("tools[{i}].name"), "expected a string")
        })?;
        let mut function = Map::new();
        function.insert("name".into(), json!(name));
        if let Some(d) = t.get("description").and_then(Value::as_str) {
            function.insert("description".into(), json!(d));
        }
        function.insert(
            "parameters".into(),
            t.get("input_schema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"})),
        );
        if let Some(strict) = t.get("strict").filter(|s| s.is_boolean()) {
            function.insert("strict".into(), strict.clone());
        }
        let mut tool = json!({"type": "function", "function": Value::Object(function)});
        if let Some(cc) = t.get("cache_control").filter(|c| !c.is_null()) {
            if target.cache_control {
                if let Some(obj) = tool.as_object_mut() {
                    obj.insert("cache_control".into(), cc.clone());
                }
            } else {
                dropped.cache_control += 1;
            }
        }
        for extra in [
            "defer_loading",
            "input_examples",
            "eager_input_streaming",
            "allowed_callers",
        ] {
            if t.get(extra).is_some() {
                dropped.field(&format!("tools.{extra}"));
            }
        }
        out.push(tool);
    }
    Ok(out)
}

fn translate_tool_choice(
    choice: &Value,
    out: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let kind = choice.get("type").and_then(Value::as_str);
    let chat = match kind {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| TranslateError::invalid("tool_choice.name", "expected a string"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(TranslateError::invalid(
                "tool_choice.type",
                "expected auto, any, tool or none",
            ));
        }
    };
    out.insert("tool_choice".into(), chat);
    if choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        == Some(true)
    {
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(())
}
