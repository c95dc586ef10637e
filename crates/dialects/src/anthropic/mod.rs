//! Anthropic Messages ⇄ OpenAI chat completions.
//!
//! Formats as read from their sources (cited again beside the code that relies on them):
//! - Messages API request and response: anthropics/anthropic-sdk-python `src/anthropic/types/message_create_params.py`,
//!   `types/message.py`, `types/usage.py` (`input_tokens` excludes the cache reads and writes: "Total input tokens in a
//!   request is the summation of `input_tokens`, `cache_creation_input_tokens`, and `cache_read_input_tokens`").
//! - The event stream: `types/raw_message_stream_event.py` and the `raw_*_event.py` files; `_streaming.py` (events
//!   are dispatched by their SSE `event:` name; `ping` is skipped; `error` raises); <https://docs.claude.com/en/api/messages-streaming>.
//! - Errors: <https://docs.claude.com/en/api/errors> (`{"type":"error","error":{"type","message"}}`, one type per status).
//! - Chat completions: openai/openai-python `src/openai/types/chat/` (`chat_completion_chunk.py`, `completion_usage.py`);
//!   Kimi and DeepSeek stream `reasoning_content` in the delta; Kimi may put the final `usage` inside `choices[0]`
//!   (<https://platform.kimi.ai/docs/guide/utilize-the-streaming-output-feature-of-kimi-api>); Moonshot reports
//!   `usage.cached_tokens`, DeepSeek `usage.prompt_cache_hit_tokens`.
//!
//! How the proxy uses it, for an Anthropic client in front of a chat provider:
//! 1. [`request_to_chat`] on the request body, with the provider's [`ChatTarget`]; send [`Translated::body`],
//!    record [`Translated::dropped`], keep [`Translated::answer_context`] for the answer.
//! 2. A JSON answer: [`chat_response_to_messages`]. An event stream: one [`ChatToMessagesStream`] per response, fed
//!    each SSE `data:` payload (including `[DONE]`), then [`ChatToMessagesStream::finish`] when the body ends.
//! 3. An error status: [`chat_error_to_messages`] on the upstream body, or [`error_body`] for the proxy's own errors.
//!
//! And for a chat client in front of an Anthropic-native provider: [`chat_request_to_messages`],
//! [`messages_response_to_chat`], [`MessagesToChatStream`], [`messages_error_to_chat`].

mod error;
mod request;
mod response;
mod reverse_request;
mod reverse_stream;
mod stream;

pub use error::{
    chat_error_to_messages, error_body, error_type_for_status, messages_error_to_chat,
};
pub use request::{client_session_id, request_to_chat, session_id_from_user_id};
pub use response::{chat_response_to_messages, messages_response_to_chat};
pub use reverse_request::chat_request_to_messages;
pub use reverse_stream::MessagesToChatStream;
pub use stream::ChatToMessagesStream;

use std::fmt;

/// The prefix put before the content of a `tool_result` with `is_error: true` when it becomes a chat `tool`
/// message (chat has no error flag), and recognised on the way back.
pub const TOOL_ERROR_PREFIX: &str = "[tool error] ";

/// `max_tokens` sent to an Anthropic provider when the chat request names none (Anthropic requires it) and the
/// target knows no maximum output of its own.
pub const DEFAULT_MAX_TOKENS: u64 = 8192;

/// What a chat completions provider and model accept, for [`request_to_chat`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatTarget {
    /// The upstream model id written into the chat request's `model`.
    pub model: String,
    /// The model takes `reasoning_effort` (from `thinking` and `output_config.effort`); otherwise both are dropped.
    pub reasoning_effort: bool,
    /// The provider takes `top_k`; otherwise it is dropped.
    pub top_k: bool,
    /// The provider honours Anthropic-style `cache_control` marks on content parts (OpenRouter does); otherwise
    /// they are dropped (and counted) and the system prompt becomes one plain string.
    pub cache_control: bool,
    /// Earlier assistant thinking is sent back as `reasoning_content` (Kimi and DeepSeek thinking models want it
    /// with tool calls); otherwise it is dropped and counted.
    pub reasoning_content: bool,
    /// The model's largest output; a larger `max_tokens` is lowered to it.
    pub max_output_tokens: Option<u64>,
}

impl ChatTarget {
    /// A target for `model` taking `reasoning_content` back and nothing optional else.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            reasoning_content: true,
            ..Self::default()
        }
    }
}

/// What an Anthropic Messages provider and model accept, for [`chat_request_to_messages`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessagesTarget {
    /// The upstream model id written into the request's `model`.
    pub model: String,
    /// The model's largest output: the `max_tokens` sent when the chat request has none (else
    /// [`DEFAULT_MAX_TOKENS`]), and the cap of a larger one.
    pub max_output_tokens: Option<u64>,
    /// The model has extended thinking: `reasoning_effort` becomes `thinking` with a token budget; otherwise it
    /// is dropped.
    pub thinking: bool,
}

/// What a request carried that the other API has no equivalent for, and so was not sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// `cache_control` marks removed (system blocks, content blocks, tools, top level).
    pub cache_control: u32,
    /// Content blocks removed, by kind (`redacted_thinking`, `document`, `thinking`, `image` in a tool result…),
    /// each with how many.
    pub blocks: Vec<(String, u32)>,
    /// Request fields (or sub-fields, as `output_config.effort`) removed, each named once.
    pub fields: Vec<String>,
}

impl Dropped {
    /// Nothing was dropped.
    pub fn is_empty(&self) -> bool {
        self.cache_control == 0 && self.blocks.is_empty() && self.fields.is_empty()
    }

    pub(crate) fn field(&mut self, name: &str) {
        if !self.fields.iter().any(|f| f == name) {
            self.fields.push(name.to_owned());
        }
    }

    pub(crate) fn block(&mut self, kind: &str) {
        match self.blocks.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => self.blocks.push((kind.to_owned(), 1)),
        }
    }
}

/// A translated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translated {
    /// The request body to send upstream (JSON).
    pub body: Vec<u8>,
    /// The client asked for an event stream.
    pub stream: bool,
    /// The model name the client asked for; the answer reports it back.
    pub client_model: String,
    /// What had no equivalent upstream.
    pub dropped: Dropped,
    /// The client's stop sequences (to tell `stop_sequence` from `end_turn` in the answer).
    pub stop_sequences: Vec<String>,
    /// A chat client asked for a usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

impl Translated {
    /// What the answer's translation needs to know of the request.
    pub fn answer_context(&self) -> AnswerContext {
        AnswerContext {
            client_model: self.client_model.clone(),
            stop_sequences: self.stop_sequences.clone(),
            include_usage: self.include_usage,
            ..AnswerContext::default()
        }
    }
}

/// What the translation of an answer needs to know of its request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnswerContext {
    /// The model name reported to the client.
    pub client_model: String,
    /// The request's stop sequences.
    pub stop_sequences: Vec<String>,
    /// Chat clients only: end the stream with a usage chunk (`choices: []`).
    pub include_usage: bool,
    /// The prompt's size if the proxy counted it: reported in `message_start` (else 0, the real figure coming in
    /// `message_delta`).
    pub input_tokens: Option<u64>,
    /// Unix seconds for the chat answer's `created` (the crate has no clock).
    pub created: u64,
}

/// Why a request could not be translated; the client should get a 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TranslateError {
    /// The body is not JSON.
    Json(String),
    /// The body is JSON but not an object.
    NotAnObject,
    /// A required field is missing.
    Missing(&'static str),
    /// A field has the wrong shape.
    Invalid {
        /// Where, as `messages[3].content`.
        field: String,
        /// What was expected.
        reason: &'static str,
    },
}

impl TranslateError {
    /// The HTTP status the client should get.
    pub fn status(&self) -> u16 {
        400
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: &'static str) -> Self {
        TranslateError::Invalid {
            field: field.into(),
            reason,
        }
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TranslateError::Json(err) => write!(f, "request body is not valid JSON: {err}"),
            TranslateError::NotAnObject => f.write_str("request body must be a JSON object"),
            TranslateError::Missing(field) => write!(f, "{field}: field required"),
            TranslateError::Invalid { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl std::error::Error for TranslateError {}

/// Chat usage as reported by the providers: `prompt_tokens` includes the cached tokens, which are in
/// `prompt_tokens_details.cached_tokens` (OpenAI), `cached_tokens` (Moonshot) or `prompt_cache_hit_tokens`
/// (DeepSeek).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChatUsage {
    pub(crate) prompt: u64,
    pub(crate) completion: u64,
    pub(crate) cached: u64,
}

impl ChatUsage {
    pub(crate) fn from_value(usage: &serde_json::Value) -> Option<Self> {
        let obj = usage.as_object()?;
        let num = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_u64);
        let cached = num(usage.pointer("/prompt_tokens_details/cached_tokens"))
            .or_else(|| num(obj.get("cached_tokens")))
            .or_else(|| num(obj.get("prompt_cache_hit_tokens")))
            .unwrap_or(0);
        Some(Self {
            prompt: num(obj.get("prompt_tokens")).unwrap_or(0),
            completion: num(obj.get("completion_tokens")).unwrap_or(0),
            cached,
        })
    }

    /// Anthropic's `usage` object: `input_tokens` without the cache reads.
    pub(crate) fn to_messages(self) -> serde_json::Value {
        serde_json::json!({
            "input_tokens": self.prompt.saturating_sub(self.cached),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cached,
            "output_tokens": self.completion,
        })
    }
}

/// Anthropic usage (`input_tokens` + cache reads + cache writes = the whole prompt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MessagesUsage {
    pub(crate) input: u64,
    pub(crate) cache_read: u64,
    pub(crate) cache_creation: u64,
    pub(crate) output: u64,
}

impl MessagesUsage {
    /// Reads the fields present in `usage`, keeping the others (a `message_delta` usage updates a
    /// `message_start` one).
    pub(crate) fn update(&mut self, usage: &serde_json::Value) {
        let num = |k: &str| usage.get(k).and_then(serde_json::Value::as_u64);
        if let Some(n) = num("input_tokens") {
            self.input = n;
        }
        if let Some(n) = num("cache_read_input_tokens") {
            self.cache_read = n;
        }
        if let Some(n) = num("cache_creation_input_tokens") {
            self.cache_creation = n;
        }
        if let Some(n) = num("output_tokens") {
            self.output = n;
        }
    }

    /// The chat `usage` object: `prompt_tokens` is the whole prompt, the cache reads in
    /// `prompt_tokens_details.cached_tokens`.
    pub(crate) fn to_chat(self) -> serde_json::Value {
        let prompt = self
            .input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_creation);
        serde_json::json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt.saturating_add(self.output),
            "prompt_tokens_details": {"cached_tokens": self.cache_read},
        })
    }
}

/// Parses a request or answer body as a JSON object.
pub(crate) fn parse_object(
    body: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, TranslateError> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(TranslateError::NotAnObject),
        Err(err) => Err(TranslateError::Json(err.to_string())),
    }
}

pub(crate) fn to_bytes(value: &serde_json::Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail (its map keys are strings).
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// Tool call arguments (a JSON string) as Anthropic's `input` object: `""` is `{}`; anything that is not a JSON
/// object is kept whole under `_raw_arguments` so nothing is lost.
pub(crate) fn arguments_to_input(arguments: &str) -> serde_json::Value {
    if arguments.trim().is_empty() {
        return serde_json::json!({});
    }
    match serde_json::from_str::<serde_json::Value>(arguments) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        _ => serde_json::json!({ "_raw_arguments": arguments }),
    }
}
