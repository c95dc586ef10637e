//! Responses request → chat completions request.
//!
//! Request fields as in openai-python `types/responses/response_create_params.py`; input items as in
//! `response_input_item_param.py` (`EasyInputMessageParam`, `Message`, `ResponseOutputMessageParam`,
//! `ResponseFunctionToolCallParam`, `FunctionCallOutput`, `ResponseReasoningItemParam`, …); what Codex sends
//! from openai/codex `codex-rs/codex-api/src/common.rs` (`ResponsesApiRequest`: model, instructions, input,
//! tools, tool_choice "auto", parallel_tool_calls, reasoning, store, stream, include, prompt_cache_key, text).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::error::TranslateError;
use super::state::previous_not_found_error;
use super::tools::ToolNames;

/// The chat provider a Responses request is translated for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTarget {
    /// The upstream model id written into the chat request (the client's `model` is kept for the answer).
    pub model: String,
    /// The provider takes `reasoning_effort` (OpenAI o-series/gpt-5, DeepSeek, some NIM models); when false,
    /// `reasoning.effort` is dropped (and listed in [`Dropped::params`]).
    pub reasoning_effort: bool,
    /// Send the output limit as `max_completion_tokens` instead of `max_tokens`. Off by default: `max_tokens`
    /// is the field Moonshot, DeepSeek, NVIDIA NIM and OpenRouter document, while `max_completion_tokens` is
    /// OpenAI's newer name that several OpenAI-compatible servers ignore; turn it on for OpenAI's reasoning
    /// models, which reject `max_tokens`.
    pub max_completion_tokens: bool,
    /// The provider takes `response_format: {"type":"json_schema"}`; when false a `json_schema` text format
    /// is sent as `json_object` (valid JSON, schema not enforced) and `text.format.schema` is listed as dropped.
    pub json_schema: bool,
}

impl ChatTarget {
    /// A target for `model` with the conservative defaults (no `reasoning_effort`, `max_tokens`,
    /// `json_schema` response formats).
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            reasoning_effort: false,
            max_completion_tokens: false,
            json_schema: true,
        }
    }
}

/// What the translation could not carry to the chat provider, for the proxy to record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Hosted tools (`web_search`, `file_search`, `code_interpreter`, `computer_use_preview`,
    /// `image_generation`, `local_shell`, `mcp`, `tool_search`, …): chat providers cannot run them.
    pub builtin_tools: u32,
    /// `custom` (free-form grammar) tools, top-level or inside a namespace: chat has no such tool type.
    pub custom_tools: u32,
    /// Reasoning items whose `encrypted_content` was dropped (only OpenAI can read it); their summary text
    /// is still sent as `reasoning_content`.
    pub encrypted_reasoning: u32,
    /// Input items with no chat form (`web_search_call`, `item_reference`, `custom_tool_call`,
    /// `local_shell_call`, `compaction`, …).
    pub items: u32,
    /// Content parts with no chat form (`input_file`, `input_audio`, an image given only by `file_id`, an
    /// image in a system/assistant/tool message).
    pub content_parts: u32,
    /// Request parameters that were present but not sent (e.g. `text.verbosity`, `truncation`,
    /// `service_tier`, `reasoning.effort` for a target without it).
    pub params: Vec<String>,
}

impl Dropped {
    /// Everything dropped, counted together (each ignored parameter counts one).
    pub fn total(&self) -> u32 {
        let params = u32::try_from(self.params.len()).unwrap_or(u32::MAX);
        self.builtin_tools
            .saturating_add(self.custom_tools)
            .saturating_add(self.encrypted_reasoning)
            .saturating_add(self.items)
            .saturating_add(self.content_parts)
            .saturating_add(params)
    }
}

/// What the answer's translation needs from the request: ids, the client's model, the parameters a Response
/// echoes, and the tool-name map. Built by [`request_to_chat`]; the proxy may replace `response_id` (e.g. to
/// use its own id scheme) before translating the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerContext {
    /// `resp_…`, the id of the Response the client will see (and the key under which to store it).
    pub response_id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The model as the client named it.
    pub model: String,
    /// Flattened chat tool names → the client's `(namespace, name)`.
    pub tool_names: ToolNames,
    /// The request parameters a Response echoes (`instructions`, `tools`, `tool_choice`, `temperature`, …),
    /// as the client sent them.
    pub echo: Map<String, Value>,
    /// Whether `response.completed` carries the full `output` array as the API does (default). When false the
    /// stream translator keeps no finished item and sends `output: []` in the final event, bounding its memory
    /// to the item in progress; the SDK's `get_final_response()` then has no output (Codex does not read it).
    pub full_output_in_completed: bool,
}

/// A translated request: the chat body to send, and what the proxy keeps for the answer and for storage.
#[derive(Clone, Debug, PartialEq)]
pub struct Translated {
    /// The chat completions request body (JSON).
    pub body: Vec<u8>,
    /// The client asked for an event stream (`stream: true`); the chat request then streams too, with
    /// `stream_options.include_usage`.
    pub stream: bool,
    /// `store` (default true): the proxy should store [`items_to_store`](super::items_to_store) under
    /// [`AnswerContext::response_id`] so a follow-up may name it as `previous_response_id`.
    pub store: bool,
    /// The request's `previous_response_id`.
    pub previous_response_id: Option<String>,
    /// `include` (e.g. `reasoning.encrypted_content`): read out, nothing to send a chat provider.
    pub include: Vec<String>,
    /// `prompt_cache_key`.
    pub prompt_cache_key: Option<String>,
    /// The session this request belongs to: `prompt_cache_key` when present (Codex sets it to its
    /// conversation id), else none.
    pub session_id: Option<String>,
    /// `client_metadata` (Codex sends it), not sent upstream.
    pub client_metadata: Option<Value>,
    /// `metadata`, not sent upstream (echoed in the Response).
    pub metadata: Option<Value>,
    /// Counts of what was dropped.
    pub dropped: Dropped,
    /// When `store` is true: the stored items of `previous` followed by this request's input items,
    /// normalised to typed items (a string input becomes a user `message` item, a bare `{role, content}`
    /// gets `type: "message"` and content parts). Empty when `store` is false.
    pub conversation: Vec<Value>,
    /// For the answer's translation.
    pub answer: AnswerContext,
}

/// The request's `previous_response_id`, read without translating, so the proxy can look up the stored items
/// before calling [`request_to_chat`].
pub fn previous_response_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        previous_response_id: Option<String>,
    }
    serde_json::from_slice::<Peek>(body)
        .ok()
        .and_then(|p| p.previous_response_id)
}

static ID_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh `resp_` id: 48 hex digits mixed from the clock, the process id and a counter.
pub(crate) fn new_response_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = ID_COUNTER.fetch_add(1, Ordering::Relaxed);
    // The seed's words hashed directly (no text made of them: this runs for every request).
    let seed = [
        nanos as u64,
        (nanos >> 64) as u64,
        count,
        u64::from(std::process::id()),
    ];
    let mut out = String::with_capacity(5 + 48);
    out.push_str("resp_");
    for salt in 0u8..3 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(salt);
        for word in seed {
            for b in word.to_le_bytes() {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        // A final avalanche so the three words differ in every digit.
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        for shift in (0..16).rev() {
            let digit = ((hash >> (shift * 4)) & 0xf) as u32;
            out.push(char::from_digit(digit, 16).unwrap_or('0'));
        }
    }
    out
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

fn present(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).is_some_and(|v| !v.is_null())
}

/// Translates a Responses request `body` for `target`. `previous` is the stored conversation of the
/// request's `previous_response_id` (what [`items_to_store`](super::items_to_store) returned for it); when the
/// request names a `previous_response_id` and `previous` is `None`, the answer is the API's 404.
pub fn request_to_chat(
    body: &[u8],
    target: &ChatTarget,
    previous: Option<&[Value]>,
) -> Result<Translated, TranslateError> {
    let parsed: Value = serde_json::from_slice(body).map_err(|err| {
        TranslateError::invalid(
            format!("We could not parse the JSON body of your request. ({err})"),
            None,
            None,
        )
    })?;
    let Value::Object(mut req) = parsed else {
        return Err(TranslateError::invalid(
            "The request body must be a JSON object.",
            None,
            None,
        ));
    };

    let previous_response_id = str_field(&req, "previous_response_id").map(str::to_owned);
    if let (Some(id), None) = (&previous_response_id, previous) {
        return Err(previous_not_found_error(id));
    }
    if req.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(TranslateError::invalid(
            "Background responses are not supported by this provider.",
            Some("background"),
            None,
        ));
    }
    if present(&req, "conversation") {
        return Err(TranslateError::invalid(
            "Conversations are not supported by this provider; send the history in `input` or use \
             `previous_response_id`.",
            Some("conversation"),
            None,
        ));
    }

    let client_model = str_field(&req, "model").unwrap_or_default().to_owned();
    let store = req.get("store").and_then(Value::as_bool).unwrap_or(true);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut dropped = Dropped::default();
    let mut names = ToolNames::new();

    // Tools first: the names of function calls in the history must map like the tools' names.
    let (chat_tools, builtin_kinds) = translate_tools(req.get("tools"), &mut names, &mut dropped)?;

    let mut messages: Vec<Value> = Vec::new();
    if let Some(instructions) = req.get("instructions") {
        match instructions {
            Value::String(text) if !text.is_empty() => {
                messages.push(json!({"role": "system", "content": text}));
            }
            // `instructions` may also be a list of input items (response.py: `Union[str, List[ResponseInputItem]]`).
            Value::Array(items) => {
                let mut builder = MessageBuilder::new(&mut names, &mut dropped);
                for (i, item) in items.iter().enumerate() {
                    builder.item(item, "instructions", i)?;
                }
                messages.extend(builder.finish());
            }
            _ => {}
        }
    }

    // Taken out of the request (nothing else reads it), not copied: the input is most of a request's bytes.
    let input = req.remove("input").unwrap_or(Value::Null);
    let mut input_items: Vec<Value> = match input {
        Value::String(text) => vec![json!({
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        })],
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        _ => {
            return Err(TranslateError::invalid(
                "Invalid type for 'input': expected a string or an array of input items.",
                Some("input"),
                Some("invalid_type"),
            ));
        }
    };
    let stored_input = store.then(|| input_items.clone());
    {
        let mut builder = MessageBuilder::new(&mut names, &mut dropped);
        for (i, item) in previous.unwrap_or_default().iter().enumerate() {
            builder.item(item, "previous_response_id", i)?;
        }
        // The input's texts are moved into the chat messages, not copied: a stored conversation keeps its own
        // copy of the items (taken before), a `store: false` request (Codex's) needs none.
        for (i, item) in input_items.iter_mut().enumerate() {
            builder.item_moving(item, "input", i)?;
        }
        messages.extend(builder.finish());
    }

    let mut chat = Map::new();
    chat.insert("model".into(), Value::String(target.model.clone()));
    chat.insert("messages".into(), Value::Array(messages));
    let has_tools = !chat_tools.is_empty();
    if has_tools {
        chat.insert("tools".into(), Value::Array(chat_tools));
    }
    if let Some(choice) = req.get("tool_choice").filter(|v| !v.is_null()) {
        let mapped = translate_tool_choice(choice, &names, &builtin_kinds, &mut dropped)?;
        match (mapped, has_tools) {
            (Some(mapped), true) => {
                chat.insert("tool_choice".into(), mapped);
            }
            (Some(Value::String(mode)), false) if mode == "required" => {
                return Err(TranslateError::invalid(
                    "tool_choice is 'required' but no tool this provider can call was given.",
                    Some("tool_choice"),
                    None,
                ));
            }
            // Providers reject tool_choice without tools; without tools "auto" and "none" mean the same.
            _ => {}
        }
    }
    if has_tools && let Some(parallel) = req.get("parallel_tool_calls").filter(|v| v.is_boolean()) {
        chat.insert("parallel_tool_calls".into(), parallel.clone());
    }
    if let Some(max) = req.get("max_output_tokens").filter(|v| v.is_number()) {
        let key = if target.max_completion_tokens {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        chat.insert(key.into(), max.clone());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| v.is_number()) {
            chat.insert(key.into(), v.clone());
        }
    }
    if let Some(text) = req.get("text").and_then(Value::as_object) {
        if let Some(format) = text.get("format").and_then(Value::as_object)
            && let Some(rf) = translate_text_format(format, target, &mut dropped)?
        {
            chat.insert("response_format".into(), rf);
        }
        if present(text, "verbosity") {
            dropped.params.push("text.verbosity".into());
        }
    }
    if let Some(effort) = req
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|v| v.is_string())
    {
        if target.reasoning_effort {
            chat.insert("reasoning_effort".into(), effort.clone());
        } else {
            dropped.params.push("reasoning.effort".into());
        }
    }
    // Chat's `user` is the provider-side end-user id; `safety_identifier` is its Responses-era successor.
    // Providers know `user`, so the first present of the two is sent as `user`.
    if let Some(user) = req
        .get("user")
        .filter(|v| v.is_string())
        .or_else(|| req.get("safety_identifier").filter(|v| v.is_string()))
    {
        chat.insert("user".into(), user.clone());
    }
    if stream {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    for key in [
        "truncation",
        "service_tier",
        "top_logprobs",
        "max_tool_calls",
        "prompt",
        "prompt_cache_retention",
    ] {
        if present(&req, key) {
            dropped.params.push(key.into());
        }
    }

    // Sized for the whole request up front (the chat body is about the client's size): no regrowth.
    let mut body = Vec::with_capacity(body.len() + 256);
    serde_json::to_writer(&mut body, &Value::Object(chat)).map_err(|err| TranslateError {
        status: 500,
        kind: "server_error",
        message: format!("could not encode the chat request: {err}"),
        param: None,
        code: None,
    })?;

    let mut echo = Map::new();
    for key in [
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt_cache_key",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
        "metadata",
    ] {
        if let Some(v) = req.get(key) {
            echo.insert(key.into(), v.clone());
        }
    }

    let conversation = match stored_input {
        Some(input_items) => {
            let mut all: Vec<Value> = previous.unwrap_or_default().to_vec();
            all.extend(input_items.into_iter().map(normalize_item));
            all
        }
        None => Vec::new(),
    };
    let prompt_cache_key = str_field(&req, "prompt_cache_key").map(str::to_owned);
    let include = req
        .get("include")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();

    Ok(Translated {
        body,
        stream,
        store,
        previous_response_id,
        include,
        session_id: prompt_cache_key.clone(),
        prompt_cache_key,
        client_metadata: req.get("client_metadata").filter(|v| !v.is_null()).cloned(),
        metadata: req.get("metadata").filter(|v| !v.is_null()).cloned(),
        dropped,
        conversation,
        answer: AnswerContext {
            response_id: new_response_id(),
            created_at: now_secs(),
            model: client_model,
            tool_names: names,
            echo,
            full_output_in_completed: true,
        },
    })
}

/// `tools` → chat `tools`, and the set of dropped built-in tool types (for `tool_choice`).
fn translate_tools(
    tools: Option<&Value>,
    names: &mut ToolNames,
    dropped: &mut Dropped,
) -> Result<(Vec<Value>, Vec<String>), TranslateError> {
    let mut chat_tools = Vec::new();
    let mut builtin = Vec::new();
    let Some(tools) = tools.filter(|v| !v.is_null()) else {
        return Ok((chat_tools, builtin));
    };
    let Some(tools) = tools.as_array() else {
        return Err(TranslateError::invalid(
            "Invalid type for 'tools': expected an array.",
            Some("tools"),
            Some("invalid_type"),
        ));
    };
    for (i, tool) in tools.iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "function" => {
                chat_tools.push(function_tool(tool, None, names, &format!("tools[{i}]"))?)
            }
            "namespace" => {
                let ns = tool.get("name").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::invalid(
                        format!("Missing required parameter: 'tools[{i}].name'."),
                        Some(&format!("tools[{i}].name")),
                        Some("missing_required_parameter"),
                    )
                })?;
                let inner = tool.get("tools").and_then(Value::as_array);
                for (j, member) in inner.into_iter().flatten().enumerate() {
                    match member.get("type").and_then(Value::as_str) {
                        Some("function") => chat_tools.push(function_tool(
                            member,
                            Some(ns),
                            names,
                            &format!("tools[{i}].tools[{j}]"),
                        )?),
                        _ => dropped.custom_tools += 1,
                    }
                }
            }
            "custom" => dropped.custom_tools += 1,
            _ => {
                dropped.builtin_tools += 1;
                builtin.push(kind.to_owned());
            }
        }
    }
    Ok((chat_tools, builtin))
}

fn function_tool(
    tool: &Value,
    namespace: Option<&str>,
    names: &mut ToolNames,
    at: &str,
) -> Result<Value, TranslateError> {
    let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| {
        TranslateError::invalid(
            format!("Missing required parameter: '{at}.name'."),
            Some(&format!("{at}.name")),
            Some("missing_required_parameter"),
        )
    })?;
    let mut function = Map::new();
    function.insert("name".into(), Value::String(names.insert(namespace, name)));
    if let Some(description) = tool.get("description").filter(|v| v.is_string()) {
        function.insert("description".into(), description.clone());
    }
    if let Some(parameters) = tool.get("parameters").filter(|v| v.is_object()) {
        function.insert("parameters".into(), parameters.clone());
    }
    // Only a true `strict` is sent: several chat providers reject the field, and false is the default.
    if tool.get("strict").and_then(Value::as_bool) == Some(true) {
        function.insert("strict".into(), Value::Bool(true));
    }
    Ok(json!({"type": "function", "function": function}))
}

fn translate_tool_choice(
    choice: &Value,
    names: &ToolNames,
    builtin: &[String],
    dropped: &mut Dropped,
) -> Result<Option<Value>, TranslateError> {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Ok(Some(choice.clone()))
        }
        Value::String(mode) => Err(TranslateError::invalid(
            format!("Invalid value for 'tool_choice': '{mode}'."),
            Some("tool_choice"),
            Some("invalid_value"),
        )),
        Value::Object(obj) => {
            let kind = str_field(obj, "type").unwrap_or_default();
            match kind {
                "function" => {
                    let name = str_field(obj, "name").unwrap_or_default();
                    let namespace = str_field(obj, "namespace");
                    let chat = names
                        .chat_name(namespace, name)
                        .ok_or_else(|| {
                            TranslateError::invalid(
                                format!("Tool choice '{name}' not found in 'tools' parameter."),
                                Some("tool_choice"),
                                None,
                            )
                        })?
                        .to_owned();
                    Ok(Some(
                        json!({"type": "function", "function": {"name": chat}}),
                    ))
                }
                "allowed_tools" => {
                    // Chat has no allow-list: the mode is kept, the restriction is dropped.
                    dropped.params.push("tool_choice.tools".into());
                    let mode = str_field(obj, "mode").unwrap_or("auto");
                    Ok(Some(Value::String(mode.to_owned())))
                }
                _ => {
                    let what = if builtin.iter().any(|b| b == kind) {
                        "which this provider cannot run (built-in tools are not sent to chat providers)"
                    } else {
                        "which this provider cannot run"
                    };
                    Err(TranslateError::invalid(
                        format!("tool_choice forces the tool type '{kind}', {what}."),
                        Some("tool_choice"),
                        Some("unsupported_tool_choice"),
                    ))
                }
            }
        }
        _ => Err(TranslateError::invalid(
            "Invalid type for 'tool_choice'.",
            Some("tool_choice"),
            Some("invalid_type"),
        )),
    }
}

fn translate_text_format(
    format: &Map<String, Value>,
    target: &ChatTarget,
    dropped: &mut Dropped,
) -> Result<Option<Value>, TranslateError> {
    match str_field(format, "type").unwrap_or("text") {
        "text" => Ok(None),
        "json_object" => Ok(Some(json!({"type": "json_object"}))),
        "json_schema" => {
            if !target.json_schema {
                dropped.params.push("text.format.schema".into());
                return Ok(Some(json!({"type": "json_object"})));
            }
            // Responses flattens the schema config into `format`; chat nests it under `json_schema`
            // (openai-python `response_format_text_json_schema_config.py` vs chat `ResponseFormatJSONSchema`).
            let mut schema = Map::new();
            for key in ["name", "description", "schema", "strict"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        other => Err(TranslateError::invalid(
            format!("Invalid value for 'text.format.type': '{other}'."),
            Some("text.format.type"),
            Some("invalid_value"),
        )),
    }
}

/// A stored form of an input item: bare `{role, content}` messages become `type: "message"` items with
/// content parts, so every stored item is typed.
/// The chat role of a message item (`developer` is a system message).
fn chat_role(
    obj: &Map<String, Value>,
    field: &str,
    index: usize,
) -> Result<&'static str, TranslateError> {
    match str_field(obj, "role").unwrap_or_default() {
        "user" => Ok("user"),
        "assistant" => Ok("assistant"),
        "system" | "developer" => Ok("system"),
        other => Err(TranslateError::invalid(
            format!("Invalid value for '{field}[{index}].role': '{other}'."),
            Some(&format!("{field}[{index}].role")),
            Some("invalid_value"),
        )),
    }
}

/// A message content that is one text — a string, or a single text part — taken out of it (left empty); `None`
/// for anything else (several parts, images, refusals), which is translated from the item as it is.
fn sole_text(content: Option<&mut Value>) -> Option<String> {
    match content? {
        Value::String(text) => Some(std::mem::take(text)),
        Value::Array(parts) if parts.len() == 1 => {
            let part = parts.first_mut()?.as_object_mut()?;
            let kind = str_field(part, "type")?;
            if !matches!(
                kind,
                "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text"
            ) {
                return None;
            }
            match part.get_mut("text")? {
                Value::String(text) => Some(std::mem::take(text)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn normalize_item(item: Value) -> Value {
    let Value::Object(mut obj) = item else {
        return item;
    };
    if !obj.contains_key("type") && obj.contains_key("role") {
        obj.insert("type".into(), Value::String("message".into()));
    }
    if obj.get("type").and_then(Value::as_str) == Some("message")
        && let Some(Value::String(text)) = obj.get("content")
    {
        let part = if obj.get("role").and_then(Value::as_str) == Some("assistant") {
            json!([{"type": "output_text", "text": text, "annotations": []}])
        } else {
            json!([{"type": "input_text", "text": text}])
        };
        obj.insert("content".into(), part);
    }
    Value::Object(obj)
}

/// Builds chat messages from Responses items, merging consecutive function calls (and a preceding assistant
/// text) into one assistant message and carrying reasoning text to the next assistant message.
struct MessageBuilder<'a> {
    messages: Vec<Value>,
    reasoning: Option<String>,
    names: &'a mut ToolNames,
    dropped: &'a mut Dropped,
}

/// Text parts of one message are joined with a blank line (chat content is sent as one string, which every
/// provider accepts, rather than as a part array, which some reject for system and assistant messages).
const PART_SEPARATOR: &str = "\n\n";

impl<'a> MessageBuilder<'a> {
    fn new(names: &'a mut ToolNames, dropped: &'a mut Dropped) -> Self {
        Self {
            messages: Vec::new(),
            reasoning: None,
            names,
            dropped,
        }
    }

    fn finish(self) -> Vec<Value> {
        self.messages
    }

    /// [`item`](Self::item), with a message's text moved out of `item` rather than copied when it is one
    /// string (a string `content`, or a single text part without images): most of a request's bytes.
    fn item_moving(
        &mut self,
        item: &mut Value,
        field: &str,
        index: usize,
    ) -> Result<(), TranslateError> {
        if let Value::Object(obj) = item {
            let is_message = match str_field(obj, "type") {
                Some(kind) => kind == "message",
                None => obj.contains_key("role"),
            };
            if is_message {
                let role = chat_role(obj, field, index)?;
                if let Some(text) = sole_text(obj.get_mut("content")) {
                    self.push_message(role, Value::String(text));
                    return Ok(());
                }
            }
        }
        self.item(item, field, index)
    }

    fn item(&mut self, item: &Value, field: &str, index: usize) -> Result<(), TranslateError> {
        let Some(obj) = item.as_object() else {
            return Err(TranslateError::invalid(
                format!("Invalid type for '{field}[{index}]': expected an object."),
                Some(&format!("{field}[{index}]")),
                Some("invalid_type"),
            ));
        };
        let kind = match str_field(obj, "type") {
            Some(kind) => kind,
            None if obj.contains_key("role") => "message",
            None => "",
        };
        match kind {
            "message" => self.message(obj, field, index),
            "function_call" => {
                self.function_call(obj);
                Ok(())
            }
            "function_call_output" => {
                self.function_call_output(obj);
                Ok(())
            }
            "reasoning" => {
                self.reasoning_item(obj);
                Ok(())
            }
            _ => {
                self.dropped.items += 1;
                Ok(())
            }
        }
    }

    fn message(
        &mut self,
        obj: &Map<String, Value>,
        field: &str,
        index: usize,
    ) -> Result<(), TranslateError> {
        let role = chat_role(obj, field, index)?;
        let content = self.content(obj.get("content"), role == "user");
        self.push_message(role, content);
        Ok(())
    }

    fn push_message(&mut self, role: &'static str, content: Value) {
        if role == "assistant" {
            let mut msg = Map::new();
            msg.insert("role".into(), Value::String("assistant".into()));
            msg.insert("content".into(), content);
            if let Some(reasoning) = self.reasoning.take() {
                msg.insert("reasoning_content".into(), Value::String(reasoning));
            }
            self.messages.push(Value::Object(msg));
        } else {
            self.messages
                .push(json!({"role": role, "content": content}));
        }
    }

    /// Message content: a string, or (for user messages with images) a part array.
    fn content(&mut self, content: Option<&Value>, images_allowed: bool) -> Value {
        let parts = match content {
            Some(Value::String(text)) => return Value::String(text.clone()),
            Some(Value::Array(parts)) => parts,
            _ => return Value::String(String::new()),
        };
        // The text parts become one string unless an image comes with them: the part array is built only then
        // (the texts are most of a request's bytes; each copy of them costs).
        let has_image = images_allowed
            && parts.iter().any(|part| {
                part.get("type").and_then(Value::as_str) == Some("input_image")
                    && part.get("image_url").is_some_and(Value::is_string)
            });
        let mut texts: Vec<&str> = Vec::new();
        let mut chat_parts: Vec<Value> = Vec::new();
        for part in parts {
            let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
            match kind {
                "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text" => {
                    let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
                    texts.push(text);
                    if has_image {
                        chat_parts.push(json!({"type": "text", "text": text}));
                    }
                }
                "refusal" => {
                    let text = part
                        .get("refusal")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    texts.push(text);
                    if has_image {
                        chat_parts.push(json!({"type": "text", "text": text}));
                    }
                }
                "input_image" => match part.get("image_url").and_then(Value::as_str) {
                    Some(url) if images_allowed => {
                        let mut image = Map::new();
                        image.insert("url".into(), Value::String(url.to_owned()));
                        if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                            image.insert("detail".into(), detail.clone());
                        }
                        chat_parts.push(json!({"type": "image_url", "image_url": image}));
                    }
                    _ => self.dropped.content_parts += 1,
                },
                _ => self.dropped.content_parts += 1,
            }
        }
        if has_image {
            Value::Array(chat_parts)
        } else {
            Value::String(texts.join(PART_SEPARATOR))
        }
    }

    fn function_call(&mut self, obj: &Map<String, Value>) {
        let name = str_field(obj, "name").unwrap_or_default();
        let chat_name = self.names.insert(str_field(obj, "namespace"), name);
        let call = json!({
            "id": str_field(obj, "call_id").unwrap_or_default(),
            "type": "function",
            "function": {
                "name": chat_name,
                "arguments": str_field(obj, "arguments").unwrap_or_default(),
            }
        });
        let reasoning = self.reasoning.take();
        let last_is_assistant = self
            .messages
            .last()
            .and_then(|m| m.get("role"))
            .and_then(Value::as_str)
            == Some("assistant");
        if !last_is_assistant {
            self.messages
                .push(json!({"role": "assistant", "content": null}));
        }
        let Some(Value::Object(msg)) = self.messages.last_mut() else {
            return;
        };
        if let Some(reasoning) = reasoning {
            let merged = match msg.get("reasoning_content").and_then(Value::as_str) {
                Some(before) if !before.is_empty() => {
                    format!("{before}{PART_SEPARATOR}{reasoning}")
                }
                _ => reasoning,
            };
            msg.insert("reasoning_content".into(), Value::String(merged));
        }
        match msg.get_mut("tool_calls") {
            Some(Value::Array(calls)) => calls.push(call),
            _ => {
                msg.insert("tool_calls".into(), Value::Array(vec![call]));
            }
        }
    }

    fn function_call_output(&mut self, obj: &Map<String, Value>) {
        let content = match obj.get("output") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::new();
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("input_text" | "output_text" | "text") => {
                            texts
                                .push(part.get("text").and_then(Value::as_str).unwrap_or_default());
                        }
                        _ => self.dropped.content_parts += 1,
                    }
                }
                texts.join(PART_SEPARATOR)
            }
            // Older Codex builds sent `{"content": "...", "success": false}` for a failed call.
            Some(Value::Object(obj)) if obj.get("content").is_some_and(Value::is_string) => {
                str_field(obj, "content").unwrap_or_default().to_owned()
            }
            Some(other) if !other.is_null() => other.to_string(),
            _ => String::new(),
        };
        self.messages.push(json!({
            "role": "tool",
            "tool_call_id": str_field(obj, "call_id").unwrap_or_default(),
            "content": content,
        }));
    }

    fn reasoning_item(&mut self, obj: &Map<String, Value>) {
        if present(obj, "encrypted_content") {
            self.dropped.encrypted_reasoning += 1;
        }
        // The raw reasoning (`content` of `reasoning_text` parts) when the client has it, else the summary.
        let collect = |key: &str| -> Vec<String> {
            obj.get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let mut texts = collect("content");
        if texts.is_empty() {
            texts = collect("summary");
        }
        if texts.is_empty() {
            return;
        }
        let text = texts.join(PART_SEPARATOR);
        self.reasoning = Some(match self.reasoning.take() {
            Some(before) => format!("{before}{PART_SEPARATOR}{text}"),
            None => text,
        });
    }
}
