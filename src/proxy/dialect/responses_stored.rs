//! The stored responses' routes: `GET`/`DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel` and
//! `GET /v1/responses/{id}/input_items` (also without `/v1`).
//!
//! Where a response lives decides who answers:
//!
//! 1. **A Responses provider's** (`api = "responses"`): when its answer to a request with `store` on (the API's
//!    default) passed through, [`NativeIdTap`] noted which provider made the id, in a bounded in-memory index
//!    ([`ResponseStore::remember_native`]). The call goes to that provider as the client made it (method, query
//!    and body kept, the provider's credentials), and its answer comes back as it is.
//! 2. **The proxy's own**: a response made by translation to a chat provider, kept in [`ResponseStore`], is
//!    answered here. Such a response is never a `background` one, so `cancel` is the API's 400.
//! 3. **Neither** (the proxy restarted, the index let the id go, or another client made it at the provider):
//!    the call goes to each Responses provider in the order of their keys until one answers other than 404;
//!    the one that knows it is noted.
//! 4. **No Responses provider knows it**: the API's 404.
//!
//! None of these calls is recorded as a request: they generate nothing.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use kimi_dialects::responses as dialect;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::{Instant, Sleep};

use super::responses::{ResponseStore, StoredResponse, stored_items};
use crate::config::{ApiKey, ProviderApi};
use crate::proxy::body::ForwardError;
use crate::proxy::error::ProxyError;
use crate::proxy::pipeline::{apply_credentials, upstream_uri};
use crate::proxy::upstream::{self, OutgoingRequest};
use crate::proxy::{ProxyState, headers};
use crate::tokens::stream::SseParser;

/// Largest body a client may send with one of these calls (`cancel` takes none).
const MAX_CALL_BODY: usize = 64 * 1024;
/// Largest JSON answer [`NativeIdTap`] reads for its id; a bigger one is passed on without being noted.
const MAX_TAPPED_JSON: usize = 4 * 1024 * 1024;
/// Events of a stream [`NativeIdTap`] reads for the id (the API's first, `response.created`, carries it).
const TAPPED_EVENTS: u8 = 4;

/// One of the stored-response calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Retrieve,
    Delete,
    Cancel,
    InputItems,
}

impl Call {
    fn suffix(self) -> &'static str {
        match self {
            Call::Retrieve | Call::Delete => "",
            Call::Cancel => "/cancel",
            Call::InputItems => "/input_items",
        }
    }
}

/// `GET /v1/responses/{id}`: the Response object.
pub async fn get_response(
    State(state): State<Arc<ProxyState>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    serve(&state, id, Call::Retrieve, request).await
}

/// `DELETE /v1/responses/{id}`: `{"id","object":"response","deleted":true}` (developers.openai.com, "Delete
/// a model response").
pub async fn delete_response(
    State(state): State<Arc<ProxyState>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    serve(&state, id, Call::Delete, request).await
}

/// `POST /v1/responses/{id}/cancel`: "Only responses created with the background parameter set to true can be
/// cancelled" (developers.openai.com, "Cancel a response"); it answers the Response object.
pub async fn cancel_response(
    State(state): State<Arc<ProxyState>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    serve(&state, id, Call::Cancel, request).await
}

/// `GET /v1/responses/{id}/input_items`: the input of the request that made the response, as a list page.
pub async fn input_items(
    State(state): State<Arc<ProxyState>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    serve(&state, id, Call::InputItems, request).await
}

async fn serve(state: &ProxyState, id: String, call: Call, request: Request) -> Response {
    // An id goes into the provider's URL path: only the characters of the API's ids (`resp_` and hex), so no
    // id can reach another path of the provider.
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return not_found(&id);
    }
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_CALL_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return ProxyError::BodyTooLarge {
                limit: MAX_CALL_BODY,
            }
            .into_response();
        }
    };
    let store = &state.responses;
    // 1. A Responses provider made it.
    if let Some(provider) = store.native_provider(&id) {
        return match forward(state, &provider, &id, call, &parts, &body).await {
            Ok(response) => {
                if call == Call::Delete && response.status().is_success() {
                    store.forget_native(&id);
                }
                response
            }
            Err(error) => error.into_response(),
        };
    }
    // 2. The proxy made it.
    match store.get(&id).await {
        Ok(Some(stored)) => return local(state, &id, call, &stored, &parts).await,
        Ok(None) => {}
        Err(error) => return error.into_response(),
    }
    // 3. A Responses provider may know it.
    let mut providers: Vec<&str> = state
        .upstreams
        .iter()
        .filter(|(_, upstream)| upstream.provider.api == ProviderApi::Responses)
        .map(|(key, _)| key.as_str())
        .collect();
    providers.sort_unstable();
    let mut last = None;
    for provider in providers {
        match forward(state, provider, &id, call, &parts, &body).await {
            Ok(response) if response.status() == StatusCode::NOT_FOUND => last = Some(response),
            Ok(response) => {
                if response.status().is_success() && call != Call::Delete {
                    store.remember_native(&id, Arc::from(provider));
                }
                return response;
            }
            Err(error) => return error.into_response(),
        }
    }
    // 4. Nobody knows it: the last provider's own 404, else the API's.
    last.unwrap_or_else(|| not_found(&id))
}

/// The call to `provider`, as the client made it.
async fn forward(
    state: &ProxyState,
    provider: &str,
    id: &str,
    call: Call,
    parts: &Parts,
    body: &Bytes,
) -> Result<Response, ProxyError> {
    let Some(upstream) = state.upstreams.get(provider) else {
        return Ok(not_found(id));
    };
    let provider = &upstream.provider;
    let mut outgoing_headers = headers::upstream_request_headers(&parts.headers);
    outgoing_headers.remove(crate::context::CONTEXT_HEADER);
    apply_credentials(
        &mut outgoing_headers,
        provider,
        state.config.server.forward_client_key,
    )?;
    let path = format!("/responses/{id}{}", call.suffix());
    let outgoing = OutgoingRequest {
        method: parts.method.clone(),
        uri: upstream_uri(provider, &path, parts.uri.query())?,
        headers: outgoing_headers,
        body: body.clone(),
    };
    tracing::debug!(provider = %provider.key, ?call, id, "stored response call forwarded");
    let answer =
        upstream::send_with_retries(&upstream.client, provider, &outgoing, &upstream.throttled)
            .await?;
    let (mut response_parts, incoming) = answer.response.into_parts();
    response_parts.headers = headers::client_response_headers(&response_parts.headers);
    if let ApiKey::Ready(secret) = &provider.api_key {
        headers::drop_echoed_secret(&mut response_parts.headers, secret.expose().as_bytes());
    }
    let body = IdleBody::new(incoming, provider.timeouts.idle);
    Ok(Response::from_parts(response_parts, Body::new(body)))
}

/// A response the proxy keeps.
async fn local(
    state: &ProxyState,
    id: &str,
    call: Call,
    stored: &StoredResponse,
    parts: &Parts,
) -> Response {
    match call {
        Call::Retrieve => json_response(StatusCode::OK, stored.response.get().as_bytes().to_vec()),
        Call::Delete => match state.responses.delete(id).await {
            Ok(true) => {
                let body = serde_json::json!({"id": id, "object": "response", "deleted": true});
                json_response(StatusCode::OK, body.to_string().into_bytes())
            }
            Ok(false) => not_found(id),
            Err(error) => error.into_response(),
        },
        // The proxy answers every translated request at once (no `background`): nothing to cancel. Worded as
        // vLLM's implementation of the API (vllm-project/vllm `entrypoints/openai/serving_responses.py`,
        // `cancel_responses`).
        Call::Cancel => json_response(
            StatusCode::BAD_REQUEST,
            dialect::error_body(
                "invalid_request_error",
                "Cannot cancel a synchronous response.",
                None,
                None,
            ),
        ),
        Call::InputItems => {
            let query = Query::<InputItemsQuery>::try_from_uri(&parts.uri)
                .map(|q| q.0)
                .unwrap_or_default();
            input_items_page(id, stored, &query)
        }
    }
}

/// The API's 404 for an unknown response id.
pub(crate) fn not_found(id: &str) -> Response {
    let body = dialect::error_body(
        "invalid_request_error",
        &format!("Response with id '{id}' not found."),
        None,
        None,
    );
    json_response(StatusCode::NOT_FOUND, body)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `input_items` query: `limit` (1–100, default 20), `order` (`asc`/`desc`, default `desc`), `after` (an
/// item id), as openai-python `types/responses/input_item_list_params.py`.
#[derive(Deserialize, Default)]
pub struct InputItemsQuery {
    limit: Option<usize>,
    order: Option<String>,
    after: Option<String>,
}

/// The items the request that produced the response gave as its input, as a list page
/// (openai-python `types/responses/response_item_list.py`).
fn input_items_page(id: &str, stored: &StoredResponse, query: &InputItemsQuery) -> Response {
    let items = match stored_items(stored) {
        Ok(items) => items,
        Err(error) => return error.into_response(),
    };
    let input = stored.input.start.min(items.len())..stored.input.end.min(items.len());
    let mut page: Vec<Value> = items[input]
        .iter()
        .enumerate()
        .map(|(i, item)| with_id(item, id, i))
        .collect();
    if query.order.as_deref() != Some("asc") {
        page.reverse();
    }
    if let Some(after) = &query.after
        && let Some(at) = page
            .iter()
            .position(|item| item.get("id").and_then(Value::as_str) == Some(after))
    {
        page.drain(..=at);
    }
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let has_more = page.len() > limit;
    page.truncate(limit);
    let first = page.first().and_then(|i| i.get("id")).cloned();
    let last = page.last().and_then(|i| i.get("id")).cloned();
    let body = serde_json::json!({
        "object": "list",
        "data": page,
        "first_id": first,
        "last_id": last,
        "has_more": has_more,
    });
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// An input item with an `id` (the API lists every item with one; a plain input message has none until
/// stored): `msg_<response id>_<n>` when it had none.
fn with_id(item: &Value, response_id: &str, index: usize) -> Value {
    let mut item = item.clone();
    if let Value::Object(map) = &mut item
        && !map.get("id").is_some_and(Value::is_string)
    {
        let stem = response_id.strip_prefix("resp_").unwrap_or(response_id);
        map.insert("id".into(), Value::from(format!("msg_{stem}_{index}")));
    }
    item
}

// --- the provider's answer, passed on ----------------------------------------------------------------------

/// A provider's answer to a stored-response call, passed on frame by frame; cut when the provider falls silent
/// for longer than its idle timeout (a `GET …?stream=true` of a background response streams).
struct IdleBody {
    inner: Incoming,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration) -> IdleBody {
        IdleBody {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = ForwardError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ForwardError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(ForwardError::Idle(this.idle)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// --- noting which provider made an id ----------------------------------------------------------------------

#[derive(Deserialize)]
struct IdOf<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct EventOf<'a> {
    #[serde(borrow)]
    response: Option<IdOf<'a>>,
}

enum Tap {
    /// An event stream: the first events are read for `response.id`.
    Sse {
        parser: SseParser,
        events: u8,
    },
    /// A JSON Response: read whole (bounded) for its `id`, before its last byte goes on.
    Json {
        read: Vec<u8>,
        length: Option<usize>,
    },
    Done,
}

/// A Responses provider's answer to a `store`d request, passed on unchanged while the response id is read
/// from it (the stream's first event, or the whole JSON object) and noted as that provider's, so the
/// stored-response calls for it go there. The id is noted before the answer's last byte is passed on (a JSON
/// body with a length) or as its first events pass (a stream): a client that asks for the response once it has
/// the answer finds it noted.
pub struct NativeIdTap {
    inner: Body,
    store: Arc<ResponseStore>,
    provider: Arc<str>,
    tap: Tap,
}

impl NativeIdTap {
    pub fn new(
        inner: Body,
        store: Arc<ResponseStore>,
        provider: &str,
        event_stream: bool,
        length: Option<usize>,
    ) -> NativeIdTap {
        let tap = if event_stream {
            Tap::Sse {
                parser: SseParser::new(MAX_TAPPED_JSON),
                events: 0,
            }
        } else if length.is_some_and(|n| n > MAX_TAPPED_JSON) {
            Tap::Done
        } else {
            Tap::Json {
                read: Vec::with_capacity(length.unwrap_or(0)),
                length,
            }
        };
        NativeIdTap {
            inner,
            store,
            provider: Arc::from(provider),
            tap,
        }
    }

    fn note(&self, id: &str) {
        self.store.remember_native(id, Arc::clone(&self.provider));
    }

    /// Reads one frame of the answer (or its end, `None`).
    fn see(&mut self, data: Option<&[u8]>) {
        let mut found: Option<String> = None;
        let mut done = false;
        match &mut self.tap {
            Tap::Done => return,
            Tap::Sse { parser, events } => {
                let Some(data) = data else {
                    self.tap = Tap::Done;
                    return;
                };
                parser.feed(data, |event| {
                    if found.is_some() || *events >= TAPPED_EVENTS {
                        return;
                    }
                    *events += 1;
                    if let Ok(EventOf {
                        response: Some(response),
                    }) = serde_json::from_slice(event.data)
                    {
                        found = Some(response.id.into_owned());
                    }
                });
                done = found.is_some() || *events >= TAPPED_EVENTS;
            }
            Tap::Json { read, length } => {
                let end = match data {
                    Some(data) if read.len() + data.len() > MAX_TAPPED_JSON => {
                        self.tap = Tap::Done;
                        return;
                    }
                    Some(data) => {
                        read.extend_from_slice(data);
                        *length == Some(read.len())
                    }
                    None => true,
                };
                if end {
                    done = true;
                    if let Ok(IdOf { id }) = serde_json::from_slice(read) {
                        found = Some(id.into_owned());
                    }
                }
            }
        }
        if let Some(id) = found {
            self.note(&id);
        }
        if done {
            self.tap = Tap::Done;
        }
    }
}

impl http_body::Body for NativeIdTap {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.see(Some(data));
                }
            }
            Poll::Ready(None) => this.see(None),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn drain(body: NativeIdTap) {
        let _ = Body::new(body).collect().await.unwrap();
    }

    fn store() -> Arc<ResponseStore> {
        Arc::new(ResponseStore::new(1 << 20, Duration::from_secs(60)))
    }

    #[tokio::test]
    async fn a_json_answer_notes_its_id_before_its_last_byte() {
        let store = store();
        let json = br#"{"object":"response","output":[{"id":"msg_1"}],"id":"resp_a"}"#;
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(&json[..10])),
            Ok(Bytes::from_static(&json[10..])),
        ];
        let inner = Body::from_stream(futures_util::stream::iter(chunks));
        let mut tap = NativeIdTap::new(inner, Arc::clone(&store), "p", false, Some(json.len()));
        let first = tap.frame().await;
        assert!(first.is_some());
        assert!(store.native_provider("resp_a").is_none());
        let second = tap.frame().await;
        assert!(second.is_some());
        // The last byte is out with the id noted: no need to wait for the body's end.
        assert_eq!(store.native_provider("resp_a").as_deref(), Some("p"));
    }

    #[tokio::test]
    async fn a_stream_notes_the_id_of_its_first_event() {
        let store = store();
        let sse = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_s\",\"output\":[]}}\n\n";
        let tap = NativeIdTap::new(Body::from(sse), Arc::clone(&store), "q", true, None);
        drain(tap).await;
        assert_eq!(store.native_provider("resp_s").as_deref(), Some("q"));
    }

    #[tokio::test]
    async fn an_answer_without_an_id_notes_nothing() {
        let store = store();
        let tap = NativeIdTap::new(
            Body::from("{\"error\":{}}"),
            Arc::clone(&store),
            "p",
            false,
            None,
        );
        drain(tap).await;
        assert_eq!(store.native_ids(), 0);
    }
}
