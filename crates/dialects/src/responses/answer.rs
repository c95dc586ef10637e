//! Chat completion (JSON) → Response object, and the pieces the stream translator shares.
//!
//! The Response's fields and which are required follow openai-python `types/responses/response.py`
//! (`id`, `created_at`, `error`, `incomplete_details`, `instructions`, `metadata`, `model`, `object`, `output`,
//! `parallel_tool_calls`, `temperature`, `tool_choice`, `tools`, `top_p` required; the rest optional); output
//! items follow `response_output_message.py`, `response_output_text.py`, `response_reasoning_item.py`,
//! `response_function_tool_call.py`; usage `response_usage.py`.

use serde_json::{Map, Value, json};

use super::error::TranslateError;
use super::request::AnswerContext;
use super::tools::ToolRef;

/// The id of the `n`th output item of a response, e.g. `msg_<response hex>_0`.
pub(crate) fn item_id(ctx: &AnswerContext, prefix: &str, n: usize) -> String {
    let base = ctx
        .response_id
        .strip_prefix("resp_")
        .unwrap_or(&ctx.response_id);
    format!("{prefix}_{base}_{n}")
}

fn echo_or(ctx: &AnswerContext, key: &str, default: Value) -> Value {
    echo_or_else(ctx, key, || default)
}

/// The echoed parameter, else a default made only when needed (an object default allocates).
fn echo_or_else(ctx: &AnswerContext, key: &str, default: impl FnOnce() -> Value) -> Value {
    match ctx.echo.get(key) {
        Some(v) if !v.is_null() => v.clone(),
        _ => default(),
    }
}

/// A Response object with the request's parameters echoed as the API does.
pub(crate) fn response_object(
    ctx: &AnswerContext,
    status: &str,
    output: Vec<Value>,
    usage: Option<Value>,
    error: Option<Value>,
    incomplete_reason: Option<&str>,
) -> Value {
    let mut r = Map::new();
    r.insert("id".into(), Value::String(ctx.response_id.clone()));
    r.insert("object".into(), Value::String("response".into()));
    r.insert("created_at".into(), Value::from(ctx.created_at));
    r.insert("status".into(), Value::String(status.into()));
    r.insert("background".into(), Value::Bool(false));
    r.insert("error".into(), error.unwrap_or(Value::Null));
    r.insert(
        "incomplete_details".into(),
        incomplete_reason.map_or(Value::Null, |reason| json!({"reason": reason})),
    );
    r.insert(
        "instructions".into(),
        echo_or(ctx, "instructions", Value::Null),
    );
    r.insert(
        "max_output_tokens".into(),
        echo_or(ctx, "max_output_tokens", Value::Null),
    );
    r.insert(
        "max_tool_calls".into(),
        echo_or(ctx, "max_tool_calls", Value::Null),
    );
    r.insert("model".into(), Value::String(ctx.model.clone()));
    r.insert("output".into(), Value::Array(output));
    r.insert(
        "parallel_tool_calls".into(),
        echo_or(ctx, "parallel_tool_calls", Value::Bool(true)),
    );
    r.insert(
        "previous_response_id".into(),
        echo_or(ctx, "previous_response_id", Value::Null),
    );
    r.insert(
        "prompt_cache_key".into(),
        echo_or(ctx, "prompt_cache_key", Value::Null),
    );
    r.insert(
        "reasoning".into(),
        echo_or_else(
            ctx,
            "reasoning",
            || json!({"effort": null, "summary": null}),
        ),
    );
    r.insert(
        "safety_identifier".into(),
        echo_or(ctx, "safety_identifier", Value::Null),
    );
    r.insert(
        "service_tier".into(),
        echo_or(ctx, "service_tier", Value::String("default".into())),
    );
    r.insert("store".into(), echo_or(ctx, "store", Value::Bool(true)));
    r.insert(
        "temperature".into(),
        echo_or(ctx, "temperature", Value::Null),
    );
    r.insert(
        "text".into(),
        echo_or_else(ctx, "text", || json!({"format": {"type": "text"}})),
    );
    r.insert(
        "tool_choice".into(),
        echo_or(ctx, "tool_choice", Value::String("auto".into())),
    );
    r.insert("tools".into(), echo_or_else(ctx, "tools", || json!([])));
    r.insert(
        "top_logprobs".into(),
        echo_or(ctx, "top_logprobs", Value::from(0)),
    );
    r.insert("top_p".into(), echo_or(ctx, "top_p", Value::Null));
    r.insert(
        "truncation".into(),
        echo_or(ctx, "truncation", Value::String("disabled".into())),
    );
    r.insert("usage".into(), usage.unwrap_or(Value::Null));
    r.insert("user".into(), echo_or(ctx, "user", Value::Null));
    r.insert(
        "metadata".into(),
        echo_or_else(ctx, "metadata", || json!({})),
    );
    Value::Object(r)
}

/// A `reasoning` output item carrying `text` as its one summary part.
pub(crate) fn reasoning_item(id: &str, text: &str) -> Value {
    json!({
        "id": id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}],
    })
}

/// An `output_text` content part.
pub(crate) fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

/// An assistant `message` output item with one `output_text` part (none while in progress).
pub(crate) fn message_item(id: &str, status: &str, text: Option<&str>) -> Value {
    let content = text.map_or_else(Vec::new, |t| vec![output_text_part(t)]);
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    })
}

/// A `function_call` output item; `namespace` is present only for a tool of a `namespace` group.
pub(crate) fn function_call_item(
    id: &str,
    status: &str,
    call_id: &str,
    tool: &ToolRef,
    arguments: &str,
) -> Value {
    let mut item = Map::new();
    item.insert("id".into(), Value::String(id.into()));
    item.insert("type".into(), Value::String("function_call".into()));
    item.insert("status".into(), Value::String(status.into()));
    item.insert("arguments".into(), Value::String(arguments.into()));
    item.insert("call_id".into(), Value::String(call_id.into()));
    item.insert("name".into(), Value::String(tool.name.clone()));
    if let Some(ns) = &tool.namespace {
        item.insert("namespace".into(), Value::String(ns.clone()));
    }
    Value::Object(item)
}

fn count(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

/// A chat `usage` object → a Responses `usage` object. Cached prompt tokens are read where providers put
/// them: `prompt_tokens_details.cached_tokens` (OpenAI), `cached_tokens` (Moonshot/Kimi),
/// `prompt_cache_hit_tokens` (DeepSeek).
pub(crate) fn usage_from_chat(usage: &Value) -> Value {
    let input = count(usage.get("prompt_tokens")).unwrap_or(0);
    let output = count(usage.get("completion_tokens")).unwrap_or(0);
    let total = count(usage.get("total_tokens")).unwrap_or(input.saturating_add(output));
    let cached = count(usage.pointer("/prompt_tokens_details/cached_tokens"))
        .or_else(|| count(usage.get("cached_tokens")))
        .or_else(|| count(usage.get("prompt_cache_hit_tokens")))
        .unwrap_or(0);
    let cache_write =
        count(usage.pointer("/prompt_tokens_details/cache_write_tokens")).unwrap_or(0);
    let reasoning =
        count(usage.pointer("/completion_tokens_details/reasoning_tokens")).unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": total,
    })
}

/// `(status, incomplete reason)` for a chat `finish_reason`.
pub(crate) fn status_for(finish_reason: Option<&str>) -> (&'static str, Option<&'static str>) {
    match finish_reason {
        Some("length") => ("incomplete", Some("max_output_tokens")),
        Some("content_filter") => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

/// The Responses `error` object for a chat error object (`{"message","type","code",…}`). The code is kept when
/// it is one Codex acts on (`context_length_exceeded`, `insufficient_quota`, `rate_limit_exceeded`; see
/// openai/codex `codex-rs/codex-api/src/sse/responses.rs`), recognised from the message for providers that
/// word it differently, else `server_error`.
pub(crate) fn response_error(error: &Value) -> Value {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("upstream error")
        .to_owned();
    let code = error
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = error
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let lower = message.to_ascii_lowercase();
    let mapped = if matches!(
        code,
        "context_length_exceeded" | "insufficient_quota" | "rate_limit_exceeded" | "invalid_prompt"
    ) {
        code
    } else if lower.contains("context length")
        || lower.contains("context_length")
        || lower.contains("maximum context")
        || lower.contains("token limit")
    {
        "context_length_exceeded"
    } else if kind.contains("rate_limit") || code.contains("rate_limit") {
        "rate_limit_exceeded"
    } else {
        "server_error"
    };
    json!({"code": mapped, "message": message})
}

/// Translates a chat completion JSON answer into a Response object for the client. An answer carrying an
/// `error` object (some providers answer 200 with one) is an error with status 502 and the upstream message.
pub fn chat_to_response(body: &[u8], ctx: &AnswerContext) -> Result<Value, TranslateError> {
    let chat: Value = serde_json::from_slice(body).map_err(|err| TranslateError {
        status: 502,
        kind: "server_error",
        message: format!("the upstream answer is not valid JSON: {err}"),
        param: None,
        code: None,
    })?;
    if let Some(error) = chat.get("error").filter(|e| !e.is_null()) {
        return Err(TranslateError {
            status: 502,
            kind: "server_error",
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error")
                .to_owned(),
            param: None,
            code: error.get("code").and_then(Value::as_str).map(str::to_owned),
        });
    }
    let choice = chat.pointer("/choices/0").unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str);
    let (status, incomplete) = status_for(finish_reason);
    let item_status = if incomplete.is_some() {
        "incomplete"
    } else {
        "completed"
    };

    let mut output = Vec::new();
    let reasoning = message
        .get("reasoning_content")
        .or_else(|| message.get("reasoning"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !reasoning.is_empty() {
        output.push(reasoning_item(&item_id(ctx, "rs", output.len()), reasoning));
    }
    let mut text = message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        text.push_str(refusal);
    }
    let calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !text.is_empty() || calls.is_empty() {
        output.push(message_item(
            &item_id(ctx, "msg", output.len()),
            item_status,
            Some(&text),
        ));
    }
    for call in calls {
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let n = output.len();
        let call_id = call
            .get("id")
            .and_then(Value::as_str)
            .map_or_else(|| item_id(ctx, "call", n), str::to_owned);
        output.push(function_call_item(
            &item_id(ctx, "fc", n),
            item_status,
            &call_id,
            &ctx.tool_names.client(name),
            arguments,
        ));
    }
    let usage = chat
        .get("usage")
        .filter(|u| u.is_object())
        .map(usage_from_chat);
    Ok(response_object(
        ctx, status, output, usage, None, incomplete,
    ))
}
