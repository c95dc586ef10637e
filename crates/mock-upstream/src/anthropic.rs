//! The Anthropic-native mode: `POST /v1/messages` and `POST /v1/messages/count_tokens` (the `/v1` prefix
//! optional), answering as Anthropic's Messages API does.
//!
//! Shapes from anthropics/anthropic-sdk-python (`src/anthropic/types/message.py`, `raw_message_stream_event.py`
//! and the `raw_*_event.py` files, `message_tokens_count.py`) and <https://docs.claude.com/en/api/messages-streaming>:
//! `message_start` (usage with `input_tokens`), `ping`, per block `content_block_start` / `content_block_delta` /
//! `content_block_stop`, `message_delta` (`stop_reason`, `usage.output_tokens`), `message_stop`; each as
//! `event: NAME\ndata: JSON\n\n`. Errors: `{"type":"error","error":{"type","message"}}` with the type of the status
//! (<https://docs.claude.com/en/api/errors>).
//!
//! The `x-mock-*` headers apply as on `/chat/completions`: `x-mock-chunks` text deltas, `x-mock-reasoning` a
//! thinking block of that many `thinking_delta`s (then a `signature_delta`), `x-mock-tool-call` a `tool_use` block
//! streamed as `input_json_delta`s (and `stop_reason: tool_use`), delays, `x-mock-status` (Anthropic error bodies,
//! with `x-mock-fail-times`/`x-mock-retry-after`), faults, `x-mock-id`. Usage is always reported (Anthropic always
//! does), so `x-mock-usage` does not apply. With a required key, `x-api-key` (or `Authorization: Bearer`) must
//! carry it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::options::{Fault, MockOptions};
use crate::payload::{
    DEFAULT_MODEL, TOOL_ARG_PIECES, TOOL_NAME, full_text, pad_to_kb, reasoning_text, sse_chunk_text,
};
use crate::stream::{FLUSH_GRACE, StreamGuard, shutdown_error, sleep_or_shutdown, wait_shutdown};
use crate::{MockStats, Shared};

/// The Anthropic routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Messages,
    CountTokens,
}

/// The Anthropic route of `route` (the path without `/v1` and trailing `/`), if it is one.
pub(crate) fn route(route: &str) -> Option<Route> {
    match route {
        "/messages" => Some(Route::Messages),
        "/messages/count_tokens" => Some(Route::CountTokens),
        _ => None,
    }
}

const TOOL_USE_ID: &str = "toolu_mock";
const SIGNATURE: &str = "bW9jay1zaWduYXR1cmU=";
/// How long `stall-headers` withholds the response.
const STALL_HEADERS_FOR: Duration = Duration::from_secs(3600);
const GARBAGE_BODY: &[u8] = b"this is not SSE\n\x00\xff{{{\n\n";

/// Anthropic's error type for a status (<https://docs.claude.com/en/api/errors>).
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

fn to_bytes(value: &Value) -> Bytes {
    serde_json::to_vec(value).map_or_else(|_| Bytes::from_static(b"{}"), Bytes::from)
}

fn with_type(mut response: Response, content_type: &'static str) -> Response {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = with_type(
        Response::new(Body::from(to_bytes(value))),
        "application/json",
    );
    *response.status_mut() = status;
    response
}

/// An Anthropic error response.
pub(crate) fn error_response(status: StatusCode, message: &str, seq: u64) -> Response {
    let body = json!({
        "type": "error",
        "error": {"type": error_type(status), "message": message},
        "request_id": format!("req_mock{seq}"),
    });
    json_response(status, &body)
}

/// Answers an Anthropic route.
pub(crate) async fn respond(
    shared: &Shared,
    seq: u64,
    parts: &Parts,
    body: Bytes,
    opts: &MockOptions,
    route: Route,
) -> Response {
    if parts.method != Method::POST {
        let message = format!(
            "method {} not allowed on {}",
            parts.method,
            parts.uri.path()
        );
        return error_response(StatusCode::METHOD_NOT_ALLOWED, &message, seq);
    }
    if let Some(key) = &shared.config.required_key {
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let presented = header("x-api-key")
            .or_else(|| header(AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer ")));
        if presented != Some(key.as_str()) {
            return error_response(StatusCode::UNAUTHORIZED, "invalid x-api-key", seq);
        }
    }
    let mut shutdown = shared.shutdown_rx();
    if !sleep_or_shutdown(opts.delay, &mut shutdown).await {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "mock upstream shutting down",
            seq,
        );
    }
    if opts.fault == Some(Fault::StallHeaders) {
        sleep_or_shutdown(STALL_HEADERS_FOR, &mut shutdown).await;
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "mock upstream shutting down",
            seq,
        );
    }
    if let Some(status) = opts.status {
        let fail = opts
            .fail_times
            .is_none_or(|times| shared.should_fail(&opts.key, times));
        if fail {
            let message = format!("mock upstream error (status {})", status.as_u16());
            let mut response = error_response(status, &message, seq);
            if let Some(retry_after) = opts.retry_after.clone() {
                response.headers_mut().insert(RETRY_AFTER, retry_after);
            }
            return response;
        }
    }
    if opts.fault == Some(Fault::Garbage) {
        return with_type(
            Response::new(Body::from(Bytes::from_static(GARBAGE_BODY))),
            "text/event-stream",
        );
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "request body must be a JSON object",
                seq,
            );
        }
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("request body is not valid JSON: {err}"),
                seq,
            );
        }
    };
    if request.get("messages").and_then(Value::as_array).is_none() {
        return error_response(StatusCode::BAD_REQUEST, "messages: Field required", seq);
    }
    let input_tokens = u64::try_from(body.len() / 4).unwrap_or(u64::MAX);
    if route == Route::CountTokens {
        return json_response(StatusCode::OK, &json!({"input_tokens": input_tokens}));
    }
    if request.get("max_tokens").and_then(Value::as_u64).is_none() {
        return error_response(StatusCode::BAD_REQUEST, "max_tokens: Field required", seq);
    }
    let plan = Plan {
        id: match &opts.id {
            Some(fixed) => format!("msg_{fixed}"),
            None => format!("msg_mock{seq}"),
        },
        model: request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_MODEL)
            .to_owned(),
        chunks: opts.chunks,
        reasoning: opts.reasoning,
        tool_call: opts.tool_call,
        input_tokens,
        cache_read: opts.cache_read,
        cache_write: opts.cache_write,
        ttft: opts.ttft,
        chunk_delay: opts.chunk_delay,
        fault: opts.fault,
    };
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        let stream = event_stream(plan, Arc::clone(&shared.stats), shutdown);
        let mut response = with_type(
            Response::new(Body::from_stream(stream)),
            "text/event-stream",
        );
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    let message = plan.message(opts.body_kb);
    let bytes = to_bytes(&message);
    match opts.fault {
        Some(Fault::CloseMidStream) => {
            let half = bytes.slice(..bytes.len() / 2);
            let items = futures_util::stream::iter([Ok::<Bytes, io::Error>(half)]).chain_abort();
            with_type(Response::new(Body::from_stream(items)), "application/json")
        }
        Some(Fault::Stall) => {
            let mut shutdown = shutdown;
            let stalled = futures_util::stream::once(async move {
                wait_shutdown(&mut shutdown).await;
                Err::<Bytes, io::Error>(shutdown_error())
            });
            with_type(
                Response::new(Body::from_stream(stalled)),
                "application/json",
            )
        }
        _ => with_type(Response::new(Body::from(bytes)), "application/json"),
    }
}

/// `stream.chain_abort()`: the items, then (after a flush grace) an error that aborts the body.
trait ChainAbort: Stream<Item = Result<Bytes, io::Error>> + Sized + Send + 'static {
    fn chain_abort(self) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        use futures_util::StreamExt;
        let abort = futures_util::stream::once(async {
            tokio::time::sleep(FLUSH_GRACE).await;
            Err::<Bytes, io::Error>(io::Error::other("mock fault: close-mid-stream"))
        });
        self.chain(abort)
    }
}

impl<S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static> ChainAbort for S {}

#[derive(Clone, Debug)]
struct Plan {
    id: String,
    model: String,
    chunks: usize,
    reasoning: usize,
    tool_call: bool,
    input_tokens: u64,
    cache_read: u64,
    cache_write: u64,
    ttft: Duration,
    chunk_delay: Duration,
    fault: Option<Fault>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    MessageStart,
    Ping,
    BlockStart(Block),
    Thinking(usize),
    Signature,
    Text(usize),
    ToolArgs(usize),
    BlockStop(Block),
    MessageDelta,
    MessageStop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    Tool,
}

impl Plan {
    fn stop_reason(&self) -> &'static str {
        if self.tool_call {
            "tool_use"
        } else {
            "end_turn"
        }
    }

    fn output_tokens(&self) -> u64 {
        u64::try_from(self.chunks + self.reasoning).unwrap_or(u64::MAX)
    }

    fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": output_tokens,
        })
    }

    /// The blocks in order with their content index.
    fn blocks(&self) -> impl Iterator<Item = (usize, Block)> {
        let thinking = (self.reasoning > 0).then_some(Block::Thinking);
        let text = (self.chunks > 0).then_some(Block::Text);
        let tool = self.tool_call.then_some(Block::Tool);
        [thinking, text, tool].into_iter().flatten().enumerate()
    }

    fn index_of(&self, block: Block) -> usize {
        self.blocks()
            .find(|(_, b)| *b == block)
            .map_or(0, |(i, _)| i)
    }

    /// The whole message (JSON mode).
    fn message(&self, body_kb: Option<usize>) -> Value {
        let mut content = Vec::new();
        for (_, block) in self.blocks() {
            content.push(match block {
                Block::Thinking => {
                    let thinking: String = (0..self.reasoning).map(reasoning_text).collect();
                    json!({"type": "thinking", "thinking": thinking, "signature": SIGNATURE})
                }
                Block::Text => {
                    let mut text = full_text(self.chunks);
                    if let Some(kb) = body_kb {
                        pad_to_kb(&mut text, kb);
                    }
                    json!({"type": "text", "text": text})
                }
                Block::Tool => json!({"type": "tool_use", "id": TOOL_USE_ID, "name": TOOL_NAME, "input": {"city": "Paris"}}),
            });
        }
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason(),
            "stop_sequence": null,
            "usage": self.usage(self.output_tokens()),
        })
    }

    /// The event at `pos`, or `None` past the end.
    fn event_at(&self, pos: usize) -> Option<Event> {
        let mut pos = pos;
        let mut take = |n: usize| {
            if pos < n {
                Some(pos)
            } else {
                pos -= n;
                None
            }
        };
        if take(1).is_some() {
            return Some(Event::MessageStart);
        }
        if take(1).is_some() {
            return Some(Event::Ping);
        }
        if self.reasoning > 0 {
            if take(1).is_some() {
                return Some(Event::BlockStart(Block::Thinking));
            }
            if let Some(i) = take(self.reasoning) {
                return Some(Event::Thinking(i));
            }
            if take(1).is_some() {
                return Some(Event::Signature);
            }
            if take(1).is_some() {
                return Some(Event::BlockStop(Block::Thinking));
            }
        }
        if self.chunks > 0 {
            if take(1).is_some() {
                return Some(Event::BlockStart(Block::Text));
            }
            if let Some(i) = take(self.chunks) {
                return Some(Event::Text(i));
            }
            if take(1).is_some() {
                return Some(Event::BlockStop(Block::Text));
            }
        }
        if self.tool_call {
            if take(1).is_some() {
                return Some(Event::BlockStart(Block::Tool));
            }
            if let Some(i) = take(TOOL_ARG_PIECES.len()) {
                return Some(Event::ToolArgs(i));
            }
            if take(1).is_some() {
                return Some(Event::BlockStop(Block::Tool));
            }
        }
        if take(1).is_some() {
            return Some(Event::MessageDelta);
        }
        take(1).map(|_| Event::MessageStop)
    }

    /// Position at which `close-mid-stream` aborts the body: halfway through the text.
    fn cut_position(&self) -> usize {
        let thinking = if self.reasoning > 0 {
            self.reasoning + 3
        } else {
            0
        };
        2 + thinking + 1 + self.chunks / 2
    }

    fn render(&self, event: Event) -> Bytes {
        let (name, data) = match event {
            Event::MessageStart => {
                let mut message = self.message(None);
                message["content"] = json!([]);
                message["stop_reason"] = Value::Null;
                message["usage"] = self.usage(1);
                (
                    "message_start",
                    json!({"type": "message_start", "message": message}),
                )
            }
            Event::Ping => ("ping", json!({"type": "ping"})),
            Event::BlockStart(block) => {
                let content_block = match block {
                    Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                    Block::Text => json!({"type": "text", "text": ""}),
                    Block::Tool => {
                        json!({"type": "tool_use", "id": TOOL_USE_ID, "name": TOOL_NAME, "input": {}})
                    }
                };
                let index = self.index_of(block);
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": content_block}),
                )
            }
            Event::Thinking(i) => self.delta(
                Block::Thinking,
                json!({"type": "thinking_delta", "thinking": reasoning_text(i)}),
            ),
            Event::Signature => self.delta(
                Block::Thinking,
                json!({"type": "signature_delta", "signature": SIGNATURE}),
            ),
            Event::Text(i) => self.delta(
                Block::Text,
                json!({"type": "text_delta", "text": sse_chunk_text(i)}),
            ),
            Event::ToolArgs(k) => {
                let piece = TOOL_ARG_PIECES.get(k).copied().unwrap_or_default();
                self.delta(
                    Block::Tool,
                    json!({"type": "input_json_delta", "partial_json": piece}),
                )
            }
            Event::BlockStop(block) => (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.index_of(block)}),
            ),
            Event::MessageDelta => (
                "message_delta",
                json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason(), "stop_sequence": null},
                    "usage": self.usage(self.output_tokens()),
                }),
            ),
            Event::MessageStop => ("message_stop", json!({"type": "message_stop"})),
        };
        let mut out = format!("event: {name}\ndata: ").into_bytes();
        out.extend_from_slice(&to_bytes(&data));
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    fn delta(&self, block: Block, delta: Value) -> (&'static str, Value) {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.index_of(block), "delta": delta}),
        )
    }

    fn delay_before(&self, event: Event) -> Duration {
        match event {
            Event::MessageStart => self.ttft,
            Event::Thinking(_) | Event::Text(_) | Event::ToolArgs(_) => self.chunk_delay,
            _ => Duration::ZERO,
        }
    }
}

struct State {
    plan: Plan,
    pos: usize,
    finished: bool,
    guard: StreamGuard,
    shutdown: watch::Receiver<bool>,
}

type Item = Result<Bytes, io::Error>;

async fn next_event(mut st: State) -> Option<(Item, State)> {
    if st.finished {
        return None;
    }
    let Some(event) = st.plan.event_at(st.pos) else {
        st.finished = true;
        st.guard.complete();
        return None;
    };
    if st.plan.fault == Some(Fault::Stall) && st.pos == 1 {
        wait_shutdown(&mut st.shutdown).await;
        st.finished = true;
        return Some((Err(shutdown_error()), st));
    }
    if !sleep_or_shutdown(st.plan.delay_before(event), &mut st.shutdown).await {
        st.guard.settle();
        st.finished = true;
        return Some((Err(shutdown_error()), st));
    }
    if st.plan.fault == Some(Fault::CloseMidStream) && st.pos == st.plan.cut_position() {
        st.finished = true;
        if !sleep_or_shutdown(FLUSH_GRACE, &mut st.shutdown).await {
            return Some((Err(shutdown_error()), st));
        }
        return Some((Err(io::Error::other("mock fault: close-mid-stream")), st));
    }
    let frame = st.plan.render(event);
    if event == Event::MessageStop {
        st.finished = true;
        st.guard.complete();
    }
    st.pos += 1;
    Some((Ok(frame), st))
}

/// The Anthropic SSE body for `plan`; counts in `streams_started` / `streams_completed` like the chat streams
/// (`message_stop` completes it).
fn event_stream(
    plan: Plan,
    stats: Arc<MockStats>,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Item> + Send + 'static {
    let mut guard = StreamGuard::start(stats);
    if matches!(plan.fault, Some(Fault::CloseMidStream | Fault::Stall)) {
        guard.settle();
    }
    let state = State {
        plan,
        pos: 0,
        finished: false,
        guard,
        shutdown,
    };
    futures_util::stream::unfold(state, next_event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(reasoning: usize, chunks: usize, tool_call: bool) -> Plan {
        Plan {
            id: "msg_1".into(),
            model: "m".into(),
            chunks,
            reasoning,
            tool_call,
            input_tokens: 3,
            cache_read: 0,
            cache_write: 0,
            ttft: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            fault: None,
        }
    }

    #[test]
    fn full_sequence() {
        use Event::*;
        let p = plan(1, 2, true);
        let events: Vec<Event> = (0..).map_while(|i| p.event_at(i)).collect();
        assert_eq!(
            events,
            vec![
                MessageStart,
                Ping,
                BlockStart(Block::Thinking),
                Thinking(0),
                Signature,
                BlockStop(Block::Thinking),
                BlockStart(Block::Text),
                Text(0),
                Text(1),
                BlockStop(Block::Text),
                BlockStart(Block::Tool),
                ToolArgs(0),
                ToolArgs(1),
                ToolArgs(2),
                BlockStop(Block::Tool),
                MessageDelta,
                MessageStop,
            ]
        );
        assert_eq!(p.index_of(Block::Tool), 2);
        assert_eq!(p.event_at(p.cut_position()), Some(Text(1)));
    }

    #[test]
    fn empty_answer_is_still_a_message() {
        let p = plan(0, 0, false);
        let events: Vec<Event> = (0..).map_while(|i| p.event_at(i)).collect();
        assert_eq!(
            events,
            vec![
                Event::MessageStart,
                Event::Ping,
                Event::MessageDelta,
                Event::MessageStop
            ]
        );
    }
}
