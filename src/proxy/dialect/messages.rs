//! Anthropic Messages clients (Claude Code, the Anthropic SDKs) in front of chat completions providers.
//!
//! The translations themselves are `kimi_dialects::anthropic` (pure, tested there); this module puts them into
//! the pipeline: the request after routing, the answer after the accounting tracker (which reads the provider's
//! chat answer), the proxy's own errors in Anthropic's format, and `count_tokens` answered locally.
//!
//! Formats relied on here, beyond the dialect crate's sources:
//! - Requests carry `x-api-key` (or `Authorization: Bearer` for `ANTHROPIC_AUTH_TOKEN`), `anthropic-version`
//!   and optionally `anthropic-beta` (<https://docs.anthropic.com/en/api/overview>,
//!   <https://docs.anthropic.com/en/api/versioning>): Anthropic's own headers, meaningless to a chat provider.
//! - `POST /v1/messages/count_tokens` takes the Messages request without `max_tokens` and answers
//!   `{"input_tokens": N}` (anthropics/anthropic-sdk-python `types/message_count_tokens_params.py`,
//!   `types/message_tokens_count.py`: "The total number of tokens across the provided list of messages, system
//!   prompt, and tools").

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use kimi_dialects::Dialect;
use kimi_dialects::anthropic::{
    self, AnswerContext, ChatTarget, ChatToMessagesStream, MessagesTarget, MessagesToChatStream,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Peek;
use crate::config::{ApiKey, ProviderKind};
use crate::proxy::error::{PROXY_ERROR_HEADER, ProxyError};
use crate::proxy::headers;
use crate::proxy::pipeline::{Exchange, Route};
use crate::proxy::request::{self, ChatRequestView};
use crate::proxy::upstream::{self, OutgoingRequest};
use crate::proxy::{ProxyState, pipeline};
use crate::tokens::stream::SseParser;
use crate::util::JsonMembers;

/// Claude Code's session header (one id per conversation).
pub const SESSION_HEADER: &str = "x-claude-code-session-id";

/// Marks a `count_tokens` answer as the proxy's estimate with the model's tokenizer (not the provider's count).
pub const ESTIMATE_HEADER: &str = "x-kimi-proxy-estimate";

/// Largest whole (non-streamed) answer or error body read for translation.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// Largest SSE event translated (as the tracker's limit; a bigger one is skipped).
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The per-request state of an Anthropic client: what the answer's translation needs of the request.
#[derive(Default)]
pub struct MessagesAdapter {
    answer: Option<AnswerContext>,
}

#[derive(Deserialize)]
struct PeekBody<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

/// The model, `stream` and the session of a Messages request, without translating it.
pub fn peek(headers: &HeaderMap, body: &[u8]) -> Result<Peek, ProxyError> {
    let parsed: PeekBody<'_> = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(error) if error.is_syntax() || error.is_eof() => {
            return Err(ProxyError::InvalidJson {
                message: error.to_string(),
                line: error.line(),
                column: error.column(),
            });
        }
        Err(error) => {
            return Err(ProxyError::InvalidRequest(format!(
                "the body must be a Messages request object: {error}"
            )));
        }
    };
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ProxyError::InvalidRequest(
            "the body must be a Messages request object".to_string(),
        ));
    }
    let Some(raw_model) = parsed.model else {
        return Err(ProxyError::InvalidRequest(
            "model: field required".to_string(),
        ));
    };
    let Ok(model) = serde_json::from_str::<Cow<'_, str>>(raw_model.get()) else {
        return Err(ProxyError::InvalidRequest(
            "model: expected a string".to_string(),
        ));
    };
    let from_header = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(request::clean_session_id);
    let from_metadata = || {
        let metadata: serde_json::Value = serde_json::from_str(parsed.metadata?.get()).ok()?;
        anthropic::session_id_from_user_id(metadata.get("user_id")?.as_str()?)
            .as_deref()
            .and_then(request::clean_session_id)
    };
    Ok(Peek {
        model: model.into_owned(),
        streaming: parsed.stream.is_some_and(|raw| raw.get() == "true"),
        client_session: from_header.or_else(from_metadata),
    })
}

/// What the routed model accepts of a Messages request.
fn chat_target(route: &Route<'_>) -> ChatTarget {
    let model = &route.model;
    ChatTarget {
        model: model.upstream_id.clone(),
        // Not every chat provider takes `reasoning_effort` or `top_k`, and the catalog does not say which do:
        // they are dropped (and counted) rather than risk a 400.
        reasoning_effort: false,
        top_k: false,
        cache_control: false,
        // Kimi and DeepSeek thinking models want their reasoning back with tool calls.
        reasoning_content: model.reasoning_echo,
        max_output_tokens: None,
    }
}

/// A Messages request as the chat request for `route`, with its scan.
fn to_chat(
    route: &Route<'_>,
    body: &[u8],
) -> Result<(Bytes, ChatRequestView, AnswerContext), ProxyError> {
    let translated = anthropic::request_to_chat(body, &chat_target(route))
        .map_err(|e| ProxyError::InvalidRequest(e.to_string()))?;
    let dropped = &translated.dropped;
    if !dropped.is_empty() {
        tracing::debug!(
            model = %route.model.key,
            cache_control = dropped.cache_control,
            blocks = ?dropped.blocks,
            fields = ?dropped.fields,
            "Messages request: parts with no chat equivalent dropped"
        );
    }
    let answer = translated.answer_context();
    let body = Bytes::from(translated.body);
    let view = request::inspect(&body)?;
    Ok((body, view, answer))
}

impl MessagesAdapter {
    /// The chat request for `route`; the answer's context is kept for [`answer`](Self::answer).
    pub fn translate(
        &mut self,
        route: &Route<'_>,
        body: &[u8],
    ) -> Result<(Bytes, ChatRequestView), ProxyError> {
        let (body, view, answer) = to_chat(route, body)?;
        self.answer = Some(answer);
        Ok((body, view))
    }

    /// The chat answer in Anthropic's format: an event stream translated event by event as it passes, a JSON
    /// answer or an error status whole (bounded).
    pub async fn answer(&mut self, response: Response) -> Response {
        let ctx = self.answer.take().unwrap_or_default();
        let (mut parts, body) = response.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let event_stream = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if parts.status.is_success() && event_stream {
            let body = MessagesEventBody::new(body, &ctx);
            return Response::from_parts(parts, Body::new(body));
        }
        let status = parts.status.as_u16();
        let whole = match Limited::new(body, MAX_ANSWER_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return upstream_unreadable(parts, &error.to_string());
            }
        };
        let translated = if parts.status.is_success() {
            match anthropic::chat_response_to_messages(&whole, &ctx) {
                Ok(body) => body,
                Err(error) => return upstream_unreadable(parts, &error.to_string()),
            }
        } else {
            anthropic::chat_error_to_messages(status, &whole)
        };
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Response::from_parts(parts, Body::from(translated))
    }
}

/// A 502 in Anthropic's format for an answer that could not be read or translated (the record already has
/// the provider's status).
fn upstream_unreadable(mut parts: http::response::Parts, reason: &str) -> Response {
    tracing::warn!(%reason, "provider answer could not be translated for a Messages client");
    parts.status = StatusCode::BAD_GATEWAY;
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = anthropic::error_body(
        502,
        &format!("the provider's answer could not be translated: {reason}"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// Anthropic's own headers do not go to a chat provider; its key (`x-api-key`) goes as `Authorization` when
/// the client sent no `Authorization` (the pipeline then applies the provider's key, or forwards the client's
/// when `forward_client_key` allows).
pub fn upstream_headers(headers: &mut HeaderMap) {
    if let Some(mut key) = headers.remove("x-api-key")
        && !headers.contains_key(header::AUTHORIZATION)
        && let Ok(text) = key.to_str()
        && let Ok(mut bearer) = HeaderValue::from_str(&format!("Bearer {text}"))
    {
        key.set_sensitive(true);
        bearer.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, bearer);
    }
    let anthropic: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("anthropic-"))
        .cloned()
        .collect();
    for name in anthropic {
        headers.remove(name);
    }
}

/// A proxy error in Anthropic's format (`{"type":"error","error":{"type","message"}}`, the type from the
/// status), with the proxy's error code header.
pub fn error_response(error: ProxyError) -> Response {
    let status = error.status();
    let body = anthropic::error_body(status.as_u16(), &error.to_string());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    error.decorate(headers);
    debug_assert!(headers.contains_key(PROXY_ERROR_HEADER));
    response
}

/// One answer's event translation, fed each SSE event's data as it arrives.
pub trait EventTranslate: Send + Unpin + 'static {
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>);
    /// The upstream body ended (or was cut): what is still owed.
    fn finish(&mut self, out: &mut Vec<u8>);
}

impl EventTranslate for ChatToMessagesStream {
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        ChatToMessagesStream::push(self, data, out);
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        ChatToMessagesStream::finish(self, out);
    }
}

impl EventTranslate for MessagesToChatStream {
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        // Each Anthropic event's data names its type (the `event:` line says the same).
        MessagesToChatStream::push(self, "", data, out);
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        MessagesToChatStream::finish(self, out);
    }
}

/// A chat provider's event stream for an Anthropic client.
pub type MessagesEventBody = EventBody<ChatToMessagesStream>;

/// The answer body of a translated event stream: each frame, as the tracker passed it on, is split into SSE
/// events ([`SseParser`]) and each event's data fed to one translator ([`ChatToMessagesStream`] for an
/// Anthropic client of a chat provider, [`MessagesToChatStream`] for a chat client of an Anthropic provider);
/// what it writes goes out at once. Holds at most one partial event and one frame's translation.
pub struct EventBody<T> {
    inner: Body,
    parser: SseParser,
    translator: T,
    out: Vec<u8>,
    done: bool,
}

impl EventBody<ChatToMessagesStream> {
    pub fn new(inner: Body, ctx: &AnswerContext) -> Self {
        Self::with(inner, ChatToMessagesStream::new(ctx))
    }
}

impl<T: EventTranslate> EventBody<T> {
    pub fn with(inner: Body, translator: T) -> Self {
        Self {
            inner,
            parser: SseParser::new(MAX_EVENT_BYTES),
            translator,
            out: Vec::new(),
            done: false,
        }
    }

    fn take_out(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.out)))
    }
}

impl<T: EventTranslate> http_body::Body for EventBody<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        // Trailers: an event stream has none worth translating.
                        Err(_) => continue,
                    };
                    let (translator, out) = (&mut this.translator, &mut this.out);
                    this.parser
                        .feed(&data, |event| translator.push(event.data, out));
                    if let Some(bytes) = this.take_out() {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    // The stream was cut (upstream failure, idle timeout; the record says so already): an
                    // Anthropic stream reports that with a closing `error` event (as Anthropic itself does mid-
                    // stream), and then ends. Cutting the connection instead could lose the event in hyper's
                    // buffer. Only when nothing is owed does the failure go on as it is.
                    this.translator.finish(&mut this.out);
                    this.done = true;
                    return Poll::Ready(Some(match this.take_out() {
                        Some(bytes) => Ok(Frame::data(bytes)),
                        None => Err(error),
                    }));
                }
                Poll::Ready(None) => {
                    this.translator.finish(&mut this.out);
                    this.done = true;
                    return Poll::Ready(this.take_out().map(|bytes| Ok(Frame::data(bytes))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// `POST /v1/messages/count_tokens`: the prompt counted locally with the routed model's tokenizer, as chat
/// requests are counted (the request translated to chat, messages and tools through the per-message cache);
/// never sent upstream.
pub async fn count_tokens(state: &ProxyState, request: Request) -> Response {
    let mut exchange = Exchange::new(state, Dialect::Messages);
    match exchange.count_tokens(request).await {
        Ok(response) => response,
        Err(error) => exchange.fail(error),
    }
}

/// The count of a translated request's prompt, calibrated like the records' estimates.
pub(crate) async fn count_prompt(
    state: &ProxyState,
    route: &Route<'_>,
    body: &[u8],
) -> Result<Response, ProxyError> {
    let (chat, view, _) = to_chat(route, body)?;
    let model = &route.model;
    let tokenizer = state.accounting.tokenizer_for(model);
    let job = state
        .accounting
        .prompt_job(chat, view.layout, tokenizer.tokenizer.clone());
    let (count, _) = job.start().resolve().await;
    let (calibrated, _) = state.accounting.calibrate(&model.key, count.total);
    let mut response = Response::new(Body::from(
        serde_json::json!({ "input_tokens": calibrated }).to_string(),
    ));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // An estimate: the model's tokenizer (exact vocabulary or not) with chat framing, not the provider's count.
    let how = if tokenizer.exact {
        "tokenizer"
    } else {
        "approximate-tokenizer"
    };
    headers.insert(ESTIMATE_HEADER, HeaderValue::from_static(how));
    Ok(response)
}

impl Exchange<'_> {
    /// Read, parse and route as a Messages request, then count instead of sending: the provider's own count
    /// when it is Anthropic-native and offers `count_tokens`, else the local estimate.
    async fn count_tokens(&mut self, request: Request) -> Result<Response, ProxyError> {
        let (parts, body) = request.into_parts();
        self.note_request(&parts);
        let bytes = self.read(&parts, body).await?;
        let peek = peek(&parts.headers, &bytes)?;
        let route = self.route(&parts, &peek.model)?;
        let provider = route.provider();
        if provider.kind == ProviderKind::Anthropic
            && provider.count_tokens
            && !route.is_passthrough()
        {
            return self.count_upstream(&parts, &route, &bytes).await;
        }
        count_prompt(self.state(), &route, &bytes).await
    }

    /// `POST {base_url}/v1/messages/count_tokens` at the provider: the body as for `/v1/messages` (model mapped,
    /// undocumented fields removed), the same headers, credentials and retries; its answer (count or error)
    /// goes back as it is. Not held to the provider's request budget: Anthropic limits token counting apart
    /// from message creation (platform.claude.com/docs/en/build-with-claude/token-counting, "Pricing and rate
    /// limits"). Nothing is recorded (no tokens are spent), as for the local count.
    async fn count_upstream(
        &mut self,
        parts: &http::request::Parts,
        route: &Route<'_>,
        bytes: &Bytes,
    ) -> Result<Response, ProxyError> {
        self.native = true;
        let provider = route.provider();
        let headers = self.upstream_headers(parts, route)?;
        let uri = pipeline::upstream_uri(provider, "/v1/messages/count_tokens", parts.uri.query())?;
        let (body, _) = native_body(
            bytes,
            &route.model.upstream_id,
            &provider.anthropic_drop_fields,
        );
        let outgoing = OutgoingRequest {
            method: http::Method::POST,
            uri,
            headers,
            body,
        };
        let upstream = route.upstream();
        let answer =
            upstream::send_with_retries(&upstream.client, provider, &outgoing, &upstream.throttled)
                .await?;
        let (mut response_parts, incoming) = answer.response.into_parts();
        response_parts.headers = headers::client_response_headers(&response_parts.headers);
        if let ApiKey::Ready(secret) = &provider.api_key {
            headers::drop_echoed_secret(&mut response_parts.headers, secret.expose().as_bytes());
        }
        Ok(Response::from_parts(response_parts, Body::new(incoming)))
    }
}

/// The pipeline's entry for `POST /v1/messages`.
pub async fn messages(state: &ProxyState, request: Request) -> Response {
    pipeline::serve(state, Dialect::Messages, request).await
}

// --- Anthropic-native providers ------------------------------------------------------------------------------

/// The body for an Anthropic-native provider: the client's bytes as they are, unless the model id must be
/// mapped or the request has top-level fields the provider does not take (`drop`); then the object is written
/// again, every other member's value byte for byte. Returns the body and how many fields were removed.
pub fn native_body(body: &Bytes, upstream_model: &str, drop: &[String]) -> (Bytes, u32) {
    let Ok(JsonMembers(members)) = serde_json::from_slice::<JsonMembers<'_>>(body) else {
        // Peek read it already; anything else goes as it came, for the provider to judge.
        return (body.clone(), 0);
    };
    let model_is = |raw: &RawValue| {
        serde_json::from_str::<Cow<'_, str>>(raw.get()).is_ok_and(|m| m == upstream_model)
    };
    let dropped = members
        .iter()
        .filter(|(key, _)| drop.iter().any(|d| d == key))
        .count() as u32;
    let rename = members
        .iter()
        .any(|(key, raw)| key == "model" && !model_is(raw));
    if dropped == 0 && !rename {
        return (body.clone(), 0);
    }
    let mut out = Vec::with_capacity(body.len());
    out.push(b'{');
    let mut first = true;
    for (key, raw) in &members {
        if drop.iter().any(|d| d == key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        // Keys and a model id serialize infallibly as JSON strings.
        out.extend_from_slice(&serde_json::to_vec(key).unwrap_or_default());
        out.push(b':');
        if key == "model" {
            out.extend_from_slice(&serde_json::to_vec(upstream_model).unwrap_or_default());
        } else {
            out.extend_from_slice(raw.get().as_bytes());
        }
    }
    out.push(b'}');
    (Bytes::from(out), dropped)
}

/// The client's headers for an Anthropic-native provider: `anthropic-version` kept (Anthropic's default
/// `2023-06-01` when the client sent none: the API requires it, <https://docs.anthropic.com/en/api/versioning>),
/// `anthropic-beta` features the provider does not accept removed (the header is a comma-separated list,
/// <https://docs.anthropic.com/en/api/beta-headers>). Returns how many features were removed.
pub fn native_headers(headers: &mut HeaderMap, accepted_betas: Option<&[String]>) -> u32 {
    if !headers.contains_key("anthropic-version") {
        headers.insert(
            "anthropic-version",
            HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
        );
    }
    let Some(accepted) = accepted_betas else {
        return 0;
    };
    let mut kept: Vec<String> = Vec::new();
    let mut removed = 0u32;
    for value in headers.get_all("anthropic-beta") {
        for feature in value.to_str().unwrap_or_default().split(',') {
            let feature = feature.trim();
            if feature.is_empty() {
                continue;
            }
            if accepted.iter().any(|a| a == feature) {
                kept.push(feature.to_string());
            } else {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        headers.remove("anthropic-beta");
        if let Ok(value) = HeaderValue::from_str(&kept.join(","))
            && !kept.is_empty()
        {
            headers.insert("anthropic-beta", value);
        }
    }
    removed
}

/// The version sent when an Anthropic client sent none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Makes the chat form of a Messages request, only to count its prompt as chat requests are counted (an
/// Anthropic-native provider gets the Messages request itself), where the count runs: beside the send, after
/// the request is on the wire, not before it. `None` when it does not translate.
pub(crate) fn chat_form_for_count(route: &Route<'_>) -> crate::accounting::DeriveChat {
    let target = chat_target(route);
    Box::new(move |body: &[u8]| {
        let translated = anthropic::request_to_chat(body, &target).ok()?;
        let chat = Bytes::from(translated.body);
        let view = request::inspect(&chat).ok()?;
        Some((chat, view.layout))
    })
}

/// What a chat request lost on its way to an Anthropic provider, as one count for the record.
fn dropped_count(dropped: &anthropic::Dropped) -> u32 {
    let blocks: u32 = dropped.blocks.iter().map(|(_, n)| *n).sum();
    dropped
        .cache_control
        .saturating_add(blocks)
        .saturating_add(dropped.fields.len() as u32)
}

/// A chat request (a chat client's, or a Responses client's once translated, already shaped) as the Messages
/// request for an Anthropic-native provider, with what its answer's translation back needs and how many parts
/// had no Messages equivalent.
pub fn chat_to_native(
    route: &Route<'_>,
    chat: &[u8],
) -> Result<(Bytes, AnswerContext, u32), ProxyError> {
    let model = &route.model;
    let target = MessagesTarget {
        model: model.upstream_id.clone(),
        max_output_tokens: None,
        thinking: model.capabilities.iter().any(|c| c == "thinking"),
    };
    let translated = anthropic::chat_request_to_messages(chat, &target)
        .map_err(|e| ProxyError::InvalidRequest(e.to_string()))?;
    let mut ctx = translated.answer_context();
    ctx.created = u64::try_from(crate::util::unix_ms() / 1000).unwrap_or(0);
    let dropped = dropped_count(&translated.dropped);
    Ok((Bytes::from(translated.body), ctx, dropped))
}

/// An Anthropic provider's answer (already seen by the tracker) as a chat answer: an event stream translated
/// event by event ([`MessagesToChatStream`]), a message or an error status whole (bounded).
pub async fn native_answer_to_chat(
    response: Response,
    ctx: AnswerContext,
    provider: &str,
) -> Response {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let event_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if parts.status.is_success() && event_stream {
        let body = EventBody::with(body, MessagesToChatStream::new(&ctx));
        return Response::from_parts(parts, Body::new(body));
    }
    let unreadable = |reason: String| {
        tracing::warn!(%reason, "Anthropic provider answer could not be translated for a chat client");
        ProxyError::UpstreamUnreachable {
            provider: provider.to_string(),
            reason: format!("the provider's answer could not be translated: {reason}"),
        }
        .into_response()
    };
    let status = parts.status.as_u16();
    let whole = match Limited::new(body, MAX_ANSWER_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return unreadable(error.to_string()),
    };
    let translated = if parts.status.is_success() {
        match anthropic::messages_response_to_chat(&whole, &ctx) {
            Ok(body) => body,
            Err(error) => return unreadable(error.to_string()),
        }
    } else {
        anthropic::messages_error_to_chat(status, &whole)
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(translated))
}

#[cfg(test)]
mod native_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn body_unchanged_unless_it_must_change() {
        let body = Bytes::from_static(
            br#"{ "model" : "m1", "context_management": {"edits": []}, "max_tokens": 5 }"#,
        );
        let (same, n) = native_body(&body, "m1", &[]);
        assert_eq!((same, n), (body.clone(), 0));
        let (same, n) = native_body(&body, "m1", &["container".to_string()]);
        assert_eq!((same, n), (body.clone(), 0));
        let (changed, n) = native_body(&body, "up-1", &["context_management".to_string()]);
        assert_eq!(n, 1);
        assert_eq!(&changed[..], br#"{"model":"up-1","max_tokens":5}"#);
    }

    #[test]
    fn betas_filtered() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "anthropic-beta",
            HeaderValue::from_static("claude-code-20250219, context-management-2025-06-27"),
        );
        let accepted = vec!["claude-code-20250219".to_string()];
        assert_eq!(native_headers(&mut headers, Some(&accepted)), 1);
        assert_eq!(headers["anthropic-beta"], "claude-code-20250219");
        assert_eq!(headers["anthropic-version"], DEFAULT_ANTHROPIC_VERSION);
        assert_eq!(native_headers(&mut headers, Some(&[])), 1);
        assert!(!headers.contains_key("anthropic-beta"));
        let mut all = HeaderMap::new();
        all.insert("anthropic-beta", HeaderValue::from_static("a,b"));
        assert_eq!(native_headers(&mut all, None), 0);
        assert_eq!(all["anthropic-beta"], "a,b");
    }
}
