//! The OpenAI Responses API (`POST /v1/responses`, Codex CLI, `client.responses.create`) served by chat
//! completions providers, through the one pipeline.
//!
//! The translation itself is `kimi_dialects::responses` (pure). This module is the proxy's side of it:
//!
//! - **parse**: [`ResponsesAdapter::peek`] reads the model, `stream` and the session, and looks up the stored
//!   conversation of `previous_response_id`.
//! - **shape**: [`ResponsesAdapter::translate`] turns the request into the routed provider's chat request
//!   (its upstream model id written in), which then goes through cache, admit and send like any chat request;
//!   the [`Turn`] keeps what the answer needs.
//! - **respond**: [`ResponsesAdapter::answer`] turns the provider's chat answer into the client's API. A stream goes
//!   through [`TranslatingBody`]: each frame, after the accounting tracker saw it (in `ForwardBody`), is framed
//!   into SSE events and fed to a per-response `StreamTranslator`, whose Responses events go out at once
//!   (bounded by one event; nothing collected). A JSON answer (or an upstream error) is read whole — bounded —
//!   and translated with `chat_to_response` (or rendered as an OpenAI error body).
//! - **state**: with `store` (default true) the response and the conversation up to it are kept under the
//!   response id in [`ResponseStore`]: a bounded in-memory index (moka, weighed in bytes) in front of the
//!   database, written through the store writer's queue (never waiting), read back on a miss on the blocking
//!   pool. The stored-response routes read it (`responses_stored`). Beside it, which Responses provider made
//!   each id that provider keeps (a bounded index too), so those routes can go to it.
//!
//! Accounting always reads the provider's chat answer: the translation sits after the tracker.

use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use kimi_dialects::responses::{self as dialect, StreamTranslator, Translated};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::Peek;
use crate::accounting::tracker::{ClientSaw, ClientSawSender};
use crate::proxy::ProxyState;
use crate::proxy::error::ProxyError;
use crate::proxy::pipeline::Route;
use crate::proxy::request::{self, ChatRequestView, clean_session_id};
use crate::tokens::stream::SseParser;
use crate::util::unix_ms;

/// On answers to a Responses request: how many of its tools the chat provider could not be given (hosted
/// tools such as `web_search`, free-form `custom` tools). Present only when some were dropped.
pub const DROPPED_TOOLS_HEADER: &str = "x-kimi-proxy-dropped-tools";

/// Largest chat JSON answer (or upstream error body) translated; a bigger one is a 502.
const MAX_JSON_ANSWER: usize = 32 * 1024 * 1024;
/// Largest chat SSE event translated; a bigger one is skipped (as the tracker does).
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

// --- state --------------------------------------------------------------------------------------------------

pub use crate::store::responses::{ResponseBacking, StoredResponse};

/// The conversation a stored response holds, as items.
pub(crate) fn stored_items(stored: &StoredResponse) -> Result<Vec<Value>, ProxyError> {
    serde_json::from_str(stored.items.get()).map_err(|e| {
        ProxyError::InvalidRequest(format!("stored response {} unreadable: {e}", stored.id))
    })
}

/// Stored responses: memory first (bounded in bytes, expiring with the retention), the database behind.
/// Without a database (store disabled) the memory index alone keeps them, as long as it can.
pub struct ResponseStore {
    memory: moka::sync::Cache<String, Arc<StoredResponse>>,
    backing: OnceLock<Arc<dyn ResponseBacking>>,
    /// The id of each response a Responses provider made and keeps → that provider's key (memory only: after a
    /// restart the stored-response routes ask the Responses providers in turn).
    native: moka::sync::Cache<String, Arc<str>>,
}

/// How many ids of responses kept by Responses providers the proxy remembers (about 100 bytes each).
const NATIVE_IDS: u64 = 100_000;

impl ResponseStore {
    pub fn new(max_bytes: u64, retention: Duration) -> ResponseStore {
        ResponseStore {
            memory: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, stored: &Arc<StoredResponse>| {
                    u32::try_from(stored.weight()).unwrap_or(u32::MAX)
                })
                .time_to_live(retention)
                .build(),
            backing: OnceLock::new(),
            native: moka::sync::Cache::builder()
                .max_capacity(NATIVE_IDS)
                .time_to_live(retention)
                .build(),
        }
    }

    /// Notes that `provider` (a Responses provider) made and keeps the response `id`.
    pub fn remember_native(&self, id: &str, provider: Arc<str>) {
        self.native.insert(id.to_string(), provider);
    }

    /// The Responses provider that made the response `id`, when noted.
    pub fn native_provider(&self, id: &str) -> Option<Arc<str>> {
        self.native.get(id)
    }

    /// Forgets the provider of `id` (deleted there).
    pub fn forget_native(&self, id: &str) {
        self.native.invalidate(id);
    }

    /// How many provider-kept ids are noted.
    pub fn native_ids(&self) -> u64 {
        self.native.run_pending_tasks();
        self.native.entry_count()
    }

    /// Connects the database (once, at start).
    pub fn set_backing(&self, backing: Arc<dyn ResponseBacking>) {
        if self.backing.set(backing).is_err() {
            tracing::warn!("the Responses store already has a backing");
        }
    }

    /// Keeps `stored`: in memory at once, in the database through the writer's queue (never waiting).
    pub fn put(&self, stored: StoredResponse) {
        let stored = Arc::new(stored);
        self.memory.insert(stored.id.clone(), Arc::clone(&stored));
        if let Some(backing) = self.backing.get()
            && !backing.keep(Arc::clone(&stored))
        {
            tracing::warn!(id = %stored.id, "store queue full: the response is kept in memory only");
        }
    }

    /// The stored response `id`, from memory, else (on the blocking pool) from the database.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<StoredResponse>>, ProxyError> {
        if let Some(hit) = self.memory.get(id) {
            return Ok(Some(hit));
        }
        let Some(backing) = self.backing.get().cloned() else {
            return Ok(None);
        };
        let key = id.to_string();
        let loaded = tokio::task::spawn_blocking(move || backing.load(&key))
            .await
            .map_err(|e| ProxyError::InvalidRequest(format!("stored response lookup failed: {e}")))?
            .map_err(|e| ProxyError::InvalidRequest(format!("stored response unreadable: {e}")))?;
        Ok(loaded.map(|stored| {
            let stored = Arc::new(stored);
            self.memory.insert(stored.id.clone(), Arc::clone(&stored));
            stored
        }))
    }

    /// Deletes `id` from memory and the database; true when it existed in either.
    pub async fn delete(&self, id: &str) -> Result<bool, ProxyError> {
        let in_memory = self.memory.remove(id).is_some();
        let Some(backing) = self.backing.get().cloned() else {
            return Ok(in_memory);
        };
        let key = id.to_string();
        let in_store = tokio::task::spawn_blocking(move || backing.delete(&key))
            .await
            .map_err(|e| ProxyError::InvalidRequest(format!("stored response delete failed: {e}")))?
            .map_err(|e| {
                ProxyError::InvalidRequest(format!("stored response delete failed: {e}"))
            })?;
        Ok(in_memory || in_store)
    }
}

// --- admit --------------------------------------------------------------------------------------------------

/// Headers only a Responses client's own service reads: Codex's (`originator`, `session-id`/`session_id`,
/// `conversation_id`, `thread-id`, `x-client-request-id`, every `x-codex-*`, as the issue's capture of Codex 0.171
/// and openai/codex `codex-rs` send them) and the OpenAI-only `openai-beta`, `x-openai-subagent` and
/// `chatgpt-account-id` (an account identifier a third-party provider has no business seeing).
const CLIENT_ONLY_HEADERS: [&str; 9] = [
    "originator",
    "session-id",
    "session_id",
    "conversation_id",
    "thread-id",
    "x-client-request-id",
    "openai-beta",
    "x-openai-subagent",
    "chatgpt-account-id",
];

/// The client-only headers out of a request translated for a chat provider (a provider that speaks Responses
/// gets them all).
pub fn upstream_headers(headers: &mut HeaderMap) {
    for name in CLIENT_ONLY_HEADERS {
        headers.remove(name);
    }
    let codex: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-codex-"))
        .cloned()
        .collect();
    for name in codex {
        headers.remove(name);
    }
}

// --- parse and shape ----------------------------------------------------------------------------------------

/// The per-request state of a Responses client: what parse read, then the translation's result (from shape),
/// kept for the answer and for storage.
#[derive(Default)]
pub struct ResponsesAdapter {
    store: Option<Arc<ResponseStore>>,
    /// `previous_response_id`, looked up in shape only when the request is translated (a provider that speaks
    /// Responses keeps its own state).
    previous_id: Option<String>,
    /// Where the model name is in the body (spliced when passed through to a Responses provider).
    model_range: Range<usize>,
    /// The request said `store: false`: the provider keeps nothing of it.
    store_off: bool,
    turn: Option<Box<Turn>>,
}

/// A translated Responses request.
pub struct Turn {
    /// Tells the record how the answer ended for the client, when the translation made it a failure.
    client_saw: Option<ClientSawSender>,
    translated: Translated,
    store: Option<Arc<ResponseStore>>,
    /// Items of the conversation that came from `previous_response_id` (this request's input follows them).
    previous_items: usize,
}

#[derive(Deserialize)]
struct PeekBody<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    prompt_cache_key: Option<String>,
    previous_response_id: Option<String>,
    store: Option<bool>,
}

impl ResponsesAdapter {
    /// The model, `stream` and the session of a Responses request, and its `previous_response_id`. The session
    /// is Codex's `session-id` (or `session_id`) header, its `thread-id`, else the body's `prompt_cache_key`
    /// (Codex sets it to its conversation id).
    pub fn peek(
        &mut self,
        state: &ProxyState,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Peek, ProxyError> {
        let parsed: PeekBody = serde_json::from_slice(body).map_err(|error| {
            if error.is_syntax() || error.is_eof() {
                ProxyError::InvalidJson {
                    message: error.to_string(),
                    line: error.line(),
                    column: error.column(),
                }
            } else {
                ProxyError::InvalidRequest(format!(
                    "the body must be a Responses request object: {error}"
                ))
            }
        })?;
        let raw_model = parsed.model.filter(|raw| raw.get() != "null");
        let model = match raw_model.map(|raw| serde_json::from_str::<String>(raw.get())) {
            None => None,
            Some(Ok(model)) => Some(model),
            Some(Err(_)) => {
                return Err(ProxyError::InvalidRequest(
                    "the body must be a Responses request object: `model` must be a string"
                        .to_string(),
                ));
            }
        };
        let Some(model) = model else {
            return Err(ProxyError::Responses(dialect::TranslateError {
                status: 400,
                kind: "invalid_request_error",
                message: "Missing required parameter: 'model'.".to_string(),
                param: Some("model".to_string()),
                code: Some("missing_required_parameter".to_string()),
            }));
        };
        self.store = Some(Arc::clone(&state.responses));
        self.previous_id = parsed.previous_response_id;
        self.store_off = parsed.store == Some(false);
        self.model_range = raw_model.map_or(0..0, |raw| request::offset_in(body, raw.get()));
        let client_session = ["session-id", "session_id", "thread-id"]
            .iter()
            .find_map(|name| headers.get(*name)?.to_str().ok().and_then(clean_session_id))
            .or_else(|| {
                parsed
                    .prompt_cache_key
                    .as_deref()
                    .and_then(clean_session_id)
            });
        Ok(Peek {
            model,
            streaming: parsed.stream.unwrap_or(false),
            client_session,
        })
    }

    /// Where the model name is in the body.
    pub fn model_range(&self) -> Range<usize> {
        self.model_range.clone()
    }

    /// Whether a provider that speaks Responses keeps the answer (`store`, default true).
    pub fn provider_keeps(&self) -> bool {
        !self.store_off
    }

    /// Whether the request continues a previous response.
    pub fn continues(&self) -> bool {
        self.previous_id.is_some()
    }

    /// The chat request for `route` (the upstream model id written in), with its scan, after the stored
    /// conversation of `previous_response_id` was looked up (memory first, else the database on the blocking
    /// pool). An unknown or expired `previous_response_id` is the API's 404; a request the translation refuses
    /// (e.g. `tool_choice` forcing a hosted tool) its 400.
    pub async fn translate(
        &mut self,
        state: &ProxyState,
        route: &Route<'_>,
        body: &[u8],
    ) -> Result<(Bytes, ChatRequestView), ProxyError> {
        let mut previous = None;
        if let Some(id) = self.previous_id.take()
            && let Some(stored) = state.responses.get(&id).await?
        {
            previous = Some(stored_items(&stored)?);
        }
        // What the model's chat API takes beyond the conservative defaults (dropped and counted rather than a
        // 400) is said by its `capabilities`: `reasoning_effort` (`reasoning.effort` sent as
        // `reasoning_effort`), `max_completion_tokens` (the output limit under that name, which OpenAI's
        // reasoning models require instead of `max_tokens`).
        let mut target = dialect::ChatTarget::new(route.model.upstream_id.clone());
        let capable = |name: &str| route.model.capabilities.iter().any(|c| c == name);
        target.reasoning_effort = capable("reasoning_effort");
        target.max_completion_tokens = capable("max_completion_tokens");
        let mut translated = dialect::request_to_chat(body, &target, previous.as_deref())
            .map_err(ProxyError::Responses)?;
        if !translated.dropped.params.is_empty() {
            tracing::debug!(params = ?translated.dropped.params, "Responses request: parameters not sent");
        }
        // The chat body goes on alone; the turn keeps the rest.
        let chat = Bytes::from(std::mem::take(&mut translated.body));
        let view = request::inspect(&chat)?;
        self.turn = Some(Box::new(Turn {
            client_saw: None,
            translated,
            store: self.store.clone(),
            previous_items: previous.as_ref().map_or(0, Vec::len),
        }));
        Ok((chat, view))
    }

    /// Where the record hears how the translated answer ended for the client (once translated).
    pub fn client_saw(&mut self) -> Option<tokio::sync::oneshot::Receiver<Option<ClientSaw>>> {
        let turn = self.turn.as_mut()?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        turn.client_saw = Some(sender);
        Some(receiver)
    }

    /// Tools the chat provider was not given (hosted and `custom` tools).
    pub fn dropped_tools(&self) -> u32 {
        self.turn.as_ref().map_or(0, |turn| turn.dropped_tools())
    }

    /// The provider's chat answer (already passing through the tracker) in the client's API.
    pub async fn answer(&mut self, response: Response) -> Response {
        match self.turn.take() {
            Some(turn) => turn.answer(response).await,
            None => response,
        }
    }
}

impl Turn {
    fn dropped_tools(&self) -> u32 {
        let dropped = &self.translated.dropped;
        dropped.builtin_tools.saturating_add(dropped.custom_tools)
    }

    // --- respond --------------------------------------------------------------------------------------------

    async fn answer(mut self: Box<Self>, chat: Response) -> Response {
        let (mut parts, body) = chat.into_parts();
        let dropped = self.dropped_tools();
        if dropped > 0 {
            parts
                .headers
                .insert(DROPPED_TOOLS_HEADER, HeaderValue::from(dropped));
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        let event_stream = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if parts.status.is_success() && event_stream {
            let body = TranslatingBody::new(body, *self);
            return Response::from_parts(parts, Body::new(body));
        }
        let bytes = match Limited::new(body, MAX_JSON_ANSWER).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                let error = dialect::TranslateError {
                    status: 502,
                    kind: "server_error",
                    message: format!("the upstream answer could not be read: {error}"),
                    param: None,
                    code: None,
                };
                self.tell(Some(ClientSaw {
                    status: 502,
                    error_kind: "translation_failed",
                }));
                return with_headers(ProxyError::Responses(error).into_response(), &parts);
            }
        };
        if !parts.status.is_success() {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let body = openai_error(parts.status, &bytes);
            return Response::from_parts(parts, Body::from(body));
        }
        match dialect::chat_to_response(&bytes, &self.translated.answer) {
            Ok(response) => {
                // The Response echoes the request's parameters beside the answer: room for both, no regrowth.
                let mut body = Vec::with_capacity(bytes.len() * 2 + 4096);
                if serde_json::to_writer(&mut body, &response).is_err() {
                    body.clear();
                }
                self.keep(&response);
                parts.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Response::from_parts(parts, Body::from(body))
            }
            Err(error) => {
                tracing::warn!(%error, "chat answer not translatable into a Response");
                self.tell(Some(ClientSaw {
                    status: error.status,
                    error_kind: "translation_failed",
                }));
                with_headers(ProxyError::Responses(error).into_response(), &parts)
            }
        }
    }

    /// Tells the record how the answer ended for the client (once; `None`: as the provider sent it).
    fn tell(&mut self, saw: Option<ClientSaw>) {
        if let Some(sender) = self.client_saw.take() {
            let _ = sender.send(saw);
        }
    }

    /// Stores the finished response when the request asked for it (`store`, default true).
    fn keep(&self, response: &Value) {
        let translated = &self.translated;
        if !translated.store || response.get("status").and_then(Value::as_str) == Some("failed") {
            return;
        }
        let items = dialect::items_to_store(translated, response);
        let input_end = translated.conversation.len();
        let stored = (|| {
            Some(StoredResponse {
                id: translated.answer.response_id.clone(),
                created_at_ms: unix_ms(),
                response: serde_json::value::to_raw_value(response).ok()?,
                items: serde_json::value::to_raw_value(&items).ok()?,
                input: self.previous_items.min(input_end)..input_end,
            })
        })();
        if let (Some(stored), Some(store)) = (stored, &self.store) {
            store.put(stored);
        }
    }
}

/// Our own error response, with the dropped-tools header of the answer kept.
fn with_headers(mut response: Response, parts: &http::response::Parts) -> Response {
    if let Some(value) = parts.headers.get(DROPPED_TOOLS_HEADER) {
        response
            .headers_mut()
            .insert(DROPPED_TOOLS_HEADER, value.clone());
    }
    response
}

/// An upstream error body as the OpenAI error the SDKs read: an `{"error":{…}}` object keeps its message,
/// type, param and code; anything else becomes the message of an `upstream_error`.
fn openai_error(status: StatusCode, body: &[u8]) -> Vec<u8> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let (message, kind, param, code) = match error {
        Some(Value::Object(e)) => (
            text(e.get("message")),
            text(e.get("type")),
            text(e.get("param")),
            e.get("code").and_then(|c| match c {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }),
        ),
        Some(Value::String(message)) => (Some(message.clone()), None, None, None),
        _ => (None, None, None, None),
    };
    let message = message.unwrap_or_else(|| {
        let raw = String::from_utf8_lossy(body);
        let raw: String = raw.chars().take(2000).collect();
        if raw.trim().is_empty() {
            format!("upstream answered {status}")
        } else {
            raw
        }
    });
    let kind = kind.unwrap_or_else(|| {
        if status.is_client_error() {
            "invalid_request_error".to_string()
        } else {
            "upstream_error".to_string()
        }
    });
    dialect::error_body(&kind, &message, param.as_deref(), code.as_deref())
}

// --- the streamed answer --------------------------------------------------------------------------------------

/// The client's event stream: the chat stream (already seen by the tracker) translated event by event. After
/// the terminal event the rest of the upstream body is still read (and dropped) to its end, so the tracker
/// records the request as complete rather than as left by the client.
pub struct TranslatingBody {
    inner: Body,
    parser: SseParser,
    translator: StreamTranslator,
    turn: Turn,
    kept: bool,
    done: bool,
}

impl TranslatingBody {
    fn new(inner: Body, turn: Turn) -> TranslatingBody {
        TranslatingBody {
            inner,
            parser: SseParser::new(MAX_EVENT_BYTES),
            translator: StreamTranslator::new(turn.translated.answer.clone()),
            turn,
            kept: false,
            done: false,
        }
    }

    /// Once the response is finished: stored (when asked), once.
    fn keep_once(&mut self) {
        if self.kept || !self.translator.is_finished() {
            return;
        }
        self.kept = true;
        if let Some(response) = self.translator.final_response() {
            // The client's stream ends with `response.failed`: the record says so (status 200, as sent).
            let failed = response.get("status").and_then(Value::as_str) == Some("failed");
            self.turn.tell(failed.then_some(ClientSaw {
                status: 200,
                error_kind: "response_failed",
            }));
            self.turn.keep(response);
        }
    }

    /// The upstream body ended or failed: the terminal event if none was sent yet.
    fn end(&mut self, out: &mut Vec<u8>) {
        self.done = true;
        self.translator.finish(out);
        self.keep_once();
    }
}

impl Drop for TranslatingBody {
    /// A client may close as soon as it has the terminal event (Codex does), before the upstream's body has
    /// ended: the rest of it (in practice the end of the chunked body, bounded by the idle timeout) is then
    /// read on a task of its own, so the tracker still records a complete answer rather than a client that left.
    fn drop(&mut self) {
        if self.done || !self.translator.is_finished() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rest = std::mem::take(&mut self.inner);
        runtime.spawn(async move { while let Some(Ok(_)) = rest.frame().await {} });
    }
}

impl http_body::Body for TranslatingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let mut out = Vec::new();
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if !this.translator.is_finished() {
                        let translator = &mut this.translator;
                        this.parser
                            .feed(&data, |event| translator.push(event.data, &mut out));
                        this.keep_once();
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    // The upstream failed or fell silent mid-way (recorded by the tracker): the client gets a
                    // `response.failed`, which Codex retries.
                    tracing::debug!(%error, "chat stream cut; ending the Response with response.failed");
                    this.end(&mut out);
                }
                Poll::Ready(None) => this.end(&mut out),
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
            if this.done {
                return Poll::Ready(None);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_upstream_error_keeps_its_fields_in_the_openai_shape() {
        let body = br#"{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#;
        let out: Value =
            serde_json::from_slice(&openai_error(StatusCode::TOO_MANY_REQUESTS, body)).unwrap();
        assert_eq!(out["error"]["message"], "slow down");
        assert_eq!(out["error"]["type"], "rate_limit_error");
        assert_eq!(out["error"]["code"], "rate_limit_exceeded");
    }

    #[test]
    fn a_bare_upstream_error_becomes_the_message() {
        let out: Value =
            serde_json::from_slice(&openai_error(StatusCode::BAD_GATEWAY, b"<html>bad</html>"))
                .unwrap();
        assert_eq!(out["error"]["message"], "<html>bad</html>");
        assert_eq!(out["error"]["type"], "upstream_error");
    }

    #[tokio::test]
    async fn the_memory_index_forgets_a_deleted_response() {
        let store = ResponseStore::new(1 << 20, Duration::from_secs(60));
        store.put(StoredResponse {
            id: "resp_1".into(),
            created_at_ms: 0,
            response: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            items: serde_json::value::RawValue::from_string("[]".into()).unwrap(),
            input: 0..0,
        });
        assert!(store.get("resp_1").await.unwrap().is_some());
        assert!(store.delete("resp_1").await.unwrap());
        assert!(store.get("resp_1").await.unwrap().is_none());
        assert!(!store.delete("resp_1").await.unwrap());
    }
}
