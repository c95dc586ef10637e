//! `POST /v1/responses`: a Responses-native upstream, as OpenAI serves it.
//!
//! The JSON answer is a Response object; the streamed answer is the API's event sequence, every event with
//! `type` and a `sequence_number` from 0 (shapes from openai/openai-python `src/openai/types/responses/`):
//! `response.created`, `response.in_progress`, then per output item `response.output_item.added`, its part
//! and delta events and `response.output_item.done`, finally `response.completed` carrying the whole
//! Response with `usage`. Output items: a `reasoning` item with one summary part when `x-mock-reasoning: N`
//! (N summary deltas), a `message` with one `output_text` part (`x-mock-chunks` deltas, the same texts as the
//! chat stream), and a `function_call` (`get_weather`, arguments in three deltas) with `x-mock-tool-call`.
//! `x-mock-usage: none` gives `usage: null`; otherwise usage is always reported (the API always does), with
//! `x-mock-cached-tokens: N` of its input tokens cached.
//! Faults and delays behave as for chat completions. This is an independent implementation: it does not use
//! kimi-dialects, so it can check the proxy's translation and passthrough from the outside.
//!
//! State, as the API keeps it: a response made with `store` (default true) is kept (the last [`KEPT_CAPACITY`]),
//! with its input items, once complete (a stream's at `response.completed`). `GET /responses/{id}` answers it,
//! `DELETE` removes it (`{"id","object":"response","deleted":true}`), `GET …/input_items` lists its input as a
//! list page (`limit`, `order` default `desc`, `after`; openai-python `types/responses/input_item_list_params.py`
//! and `response_item_list.py`), `POST …/cancel` cancels a `background` one. A `previous_response_id` that is not
//! kept is a 404. Not-found and cancel errors are worded as vLLM's implementation of the API words them
//! (vllm-project/vllm `entrypoints/openai/serving_responses.py`: 404 `Response with id '…' not found.`, 400
//! `Cannot cancel a synchronous response.`, both `invalid_request_error`). A `background` request (not
//! streamed) is answered at once with status `queued` and no output, and stays queued until cancelled: the mock
//! runs nothing in the background.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::handler::{error_response, json_body_response, to_json_bytes, with_content_type};
use crate::options::{Fault, MockOptions, UsageMode};
use crate::payload::{
    CREATED, DEFAULT_MODEL, TOOL_ARG_PIECES, TOOL_CALL_ID, TOOL_NAME, full_text, pad_to_kb,
    reasoning_text, sse_chunk_text,
};
use crate::stream::{FLUSH_GRACE, StreamGuard, shutdown_error, sleep_or_shutdown, wait_shutdown};
use crate::{MockStats, Shared, lock};

/// How many stored responses the mock keeps (the oldest go first).
pub const KEPT_CAPACITY: usize = 1024;

/// One stored response and the input items of its request.
struct KeptResponse {
    response: Value,
    input: Vec<Value>,
}

/// The stored responses, bounded, oldest first out.
#[derive(Default)]
pub(crate) struct Kept {
    map: HashMap<String, KeptResponse>,
    order: VecDeque<String>,
}

impl Kept {
    fn put(&mut self, response: Value, input: Vec<Value>) {
        let Some(id) = response
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return;
        };
        if self
            .map
            .insert(id.clone(), KeptResponse { response, input })
            .is_none()
        {
            self.order.push_back(id);
        }
        while self.order.len() > KEPT_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn remove(&mut self, id: &str) -> bool {
        if self.map.remove(id).is_none() {
            return false;
        }
        self.order.retain(|kept| kept != id);
        true
    }
}

/// What a stored response is kept with until it completes.
type Keep = (Arc<Mutex<Kept>>, Vec<Value>);

/// Everything one answer needs, for both the JSON and the streamed form.
#[derive(Clone, Debug)]
struct Plan {
    id: String,
    model: String,
    /// The request's parameters echoed in the Response.
    echo: Map<String, Value>,
    chunks: usize,
    reasoning: usize,
    tool_call: bool,
    usage: Option<Value>,
    body_kb: Option<usize>,
}

impl Plan {
    fn item_id(&self, prefix: &str, index: usize) -> String {
        let base = self.id.strip_prefix("resp_").unwrap_or(&self.id);
        format!("{prefix}_{base}_{index}")
    }

    fn reasoning_index(&self) -> Option<usize> {
        (self.reasoning > 0).then_some(0)
    }

    fn message_index(&self) -> usize {
        usize::from(self.reasoning > 0)
    }

    fn call_index(&self) -> usize {
        self.message_index() + 1
    }

    fn reasoning_full(&self) -> String {
        (0..self.reasoning).map(reasoning_text).collect()
    }

    fn message_full(&self) -> String {
        let mut text = full_text(self.chunks);
        if let Some(kb) = self.body_kb {
            pad_to_kb(&mut text, kb);
        }
        text
    }

    fn echo_or(&self, key: &str, default: Value) -> Value {
        match self.echo.get(key) {
            Some(v) if !v.is_null() => v.clone(),
            _ => default,
        }
    }

    fn response(&self, status: &str, output: Vec<Value>, usage: Option<Value>) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": self.echo_or("instructions", Value::Null),
            "max_output_tokens": self.echo_or("max_output_tokens", Value::Null),
            "max_tool_calls": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.echo_or("parallel_tool_calls", Value::Bool(true)),
            "previous_response_id": self.echo_or("previous_response_id", Value::Null),
            "prompt_cache_key": self.echo_or("prompt_cache_key", Value::Null),
            "reasoning": self.echo_or("reasoning", json!({"effort": null, "summary": null})),
            "safety_identifier": null,
            "service_tier": "default",
            "store": self.echo_or("store", Value::Bool(true)),
            "temperature": self.echo_or("temperature", json!(1.0)),
            "text": self.echo_or("text", json!({"format": {"type": "text"}})),
            "tool_choice": self.echo_or("tool_choice", json!("auto")),
            "tools": self.echo_or("tools", json!([])),
            "top_logprobs": 0,
            "top_p": self.echo_or("top_p", json!(1.0)),
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": self.echo_or("metadata", json!({})),
        })
    }

    fn reasoning_item(&self, text: Option<&str>) -> Value {
        let summary = text.map_or_else(Vec::new, |t| {
            vec![json!({"type": "summary_text", "text": t})]
        });
        json!({"id": self.item_id("rs", 0), "type": "reasoning", "summary": summary})
    }

    fn message_item(&self, text: Option<&str>) -> Value {
        let (status, content) = match text {
            Some(t) => ("completed", vec![text_part(t)]),
            None => ("in_progress", Vec::new()),
        };
        json!({
            "id": self.item_id("msg", self.message_index()),
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        })
    }

    fn call_item(&self, done: bool) -> Value {
        let (status, arguments) = if done {
            ("completed", TOOL_ARG_PIECES.concat())
        } else {
            ("in_progress", String::new())
        };
        json!({
            "id": self.item_id("fc", self.call_index()),
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": TOOL_CALL_ID,
            "name": TOOL_NAME,
        })
    }

    fn output(&self) -> Vec<Value> {
        let mut output = Vec::new();
        if self.reasoning > 0 {
            output.push(self.reasoning_item(Some(&self.reasoning_full())));
        }
        output.push(self.message_item(Some(&self.message_full())));
        if self.tool_call {
            output.push(self.call_item(true));
        }
        output
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

/// One event of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Created,
    InProgress,
    ReasoningAdded,
    SummaryPartAdded,
    SummaryDelta(usize),
    SummaryTextDone,
    SummaryPartDone,
    ReasoningDone,
    MessageAdded,
    PartAdded,
    TextDelta(usize),
    TextDone,
    PartDone,
    MessageDone,
    CallAdded,
    ArgsDelta(usize),
    ArgsDone,
    CallDone,
    Completed,
}

impl Plan {
    /// The event at position `pos` (its sequence number), or `None` past the end.
    fn event_at(&self, pos: usize) -> Option<Event> {
        let mut p = pos;
        match p {
            0 => return Some(Event::Created),
            1 => return Some(Event::InProgress),
            _ => p -= 2,
        }
        if self.reasoning > 0 {
            let n = self.reasoning;
            if p < n + 5 {
                return Some(match p {
                    0 => Event::ReasoningAdded,
                    1 => Event::SummaryPartAdded,
                    k if k < n + 2 => Event::SummaryDelta(k - 2),
                    k if k == n + 2 => Event::SummaryTextDone,
                    k if k == n + 3 => Event::SummaryPartDone,
                    _ => Event::ReasoningDone,
                });
            }
            p -= n + 5;
        }
        let n = self.chunks;
        if p < n + 5 {
            return Some(match p {
                0 => Event::MessageAdded,
                1 => Event::PartAdded,
                k if k < n + 2 => Event::TextDelta(k - 2),
                k if k == n + 2 => Event::TextDone,
                k if k == n + 3 => Event::PartDone,
                _ => Event::MessageDone,
            });
        }
        p -= n + 5;
        if self.tool_call {
            let n = TOOL_ARG_PIECES.len();
            if p < n + 3 {
                return Some(match p {
                    0 => Event::CallAdded,
                    k if k <= n => Event::ArgsDelta(k - 1),
                    k if k == n + 1 => Event::ArgsDone,
                    _ => Event::CallDone,
                });
            }
            p -= n + 3;
        }
        (p == 0).then_some(Event::Completed)
    }

    /// Position at which `close-mid-stream` aborts: in the middle of the message's deltas.
    fn cut_position(&self) -> usize {
        let reasoning = if self.reasoning > 0 {
            self.reasoning + 5
        } else {
            0
        };
        2 + reasoning + 2 + self.chunks / 2
    }

    fn fields(&self, event: Event) -> (&'static str, Value) {
        let rs = || self.item_id("rs", 0);
        let msg = || self.item_id("msg", self.message_index());
        let fc = || self.item_id("fc", self.call_index());
        let ri = self.reasoning_index().unwrap_or(0);
        let mi = self.message_index();
        let ci = self.call_index();
        match event {
            Event::Created => (
                "response.created",
                json!({"response": self.response("in_progress", Vec::new(), None)}),
            ),
            Event::InProgress => (
                "response.in_progress",
                json!({"response": self.response("in_progress", Vec::new(), None)}),
            ),
            Event::ReasoningAdded => (
                "response.output_item.added",
                json!({"output_index": ri, "item": self.reasoning_item(None)}),
            ),
            Event::SummaryPartAdded => (
                "response.reasoning_summary_part.added",
                json!({"item_id": rs(), "output_index": ri, "summary_index": 0,
                       "part": {"type": "summary_text", "text": ""}}),
            ),
            Event::SummaryDelta(i) => (
                "response.reasoning_summary_text.delta",
                json!({"item_id": rs(), "output_index": ri, "summary_index": 0, "delta": reasoning_text(i)}),
            ),
            Event::SummaryTextDone => (
                "response.reasoning_summary_text.done",
                json!({"item_id": rs(), "output_index": ri, "summary_index": 0, "text": self.reasoning_full()}),
            ),
            Event::SummaryPartDone => (
                "response.reasoning_summary_part.done",
                json!({"item_id": rs(), "output_index": ri, "summary_index": 0,
                       "part": {"type": "summary_text", "text": self.reasoning_full()}}),
            ),
            Event::ReasoningDone => (
                "response.output_item.done",
                json!({"output_index": ri, "item": self.reasoning_item(Some(&self.reasoning_full()))}),
            ),
            Event::MessageAdded => (
                "response.output_item.added",
                json!({"output_index": mi, "item": self.message_item(None)}),
            ),
            Event::PartAdded => (
                "response.content_part.added",
                json!({"item_id": msg(), "output_index": mi, "content_index": 0, "part": text_part("")}),
            ),
            Event::TextDelta(i) => (
                "response.output_text.delta",
                json!({"item_id": msg(), "output_index": mi, "content_index": 0,
                       "delta": sse_chunk_text(i), "logprobs": []}),
            ),
            Event::TextDone => (
                "response.output_text.done",
                json!({"item_id": msg(), "output_index": mi, "content_index": 0,
                       "text": full_text(self.chunks), "logprobs": []}),
            ),
            Event::PartDone => (
                "response.content_part.done",
                json!({"item_id": msg(), "output_index": mi, "content_index": 0,
                       "part": text_part(&full_text(self.chunks))}),
            ),
            Event::MessageDone => (
                "response.output_item.done",
                json!({"output_index": mi, "item": self.message_item(Some(&full_text(self.chunks)))}),
            ),
            Event::CallAdded => (
                "response.output_item.added",
                json!({"output_index": ci, "item": self.call_item(false)}),
            ),
            Event::ArgsDelta(k) => (
                "response.function_call_arguments.delta",
                json!({"item_id": fc(), "output_index": ci,
                       "delta": TOOL_ARG_PIECES.get(k).copied().unwrap_or_default()}),
            ),
            Event::ArgsDone => (
                "response.function_call_arguments.done",
                json!({"item_id": fc(), "output_index": ci, "name": TOOL_NAME,
                       "arguments": TOOL_ARG_PIECES.concat()}),
            ),
            Event::CallDone => (
                "response.output_item.done",
                json!({"output_index": ci, "item": self.call_item(true)}),
            ),
            Event::Completed => {
                let mut streamed = self.clone();
                streamed.body_kb = None;
                (
                    "response.completed",
                    json!({"response": streamed.response("completed", streamed.output(), self.usage.clone())}),
                )
            }
        }
    }

    /// `event: TYPE\ndata: {"type":…,"sequence_number":pos,…}\n\n`.
    fn render(&self, pos: usize, event: Event) -> Bytes {
        let (kind, fields) = self.fields(event);
        let mut data = Map::new();
        data.insert("type".into(), Value::String(kind.into()));
        data.insert("sequence_number".into(), Value::from(pos));
        if let Value::Object(fields) = fields {
            data.extend(fields);
        }
        let mut out = format!("event: {kind}\ndata: ").into_bytes();
        if serde_json::to_writer(&mut out, &Value::Object(data)).is_err() {
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

/// Answers `POST /responses` (the request passed the common checks: key, delay, status, faults before
/// headers).
pub(crate) fn respond(
    shared: &Shared,
    seq: u64,
    opts: &MockOptions,
    body: &Bytes,
    shutdown: watch::Receiver<bool>,
) -> Response {
    let request = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(request)) => request,
        Ok(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "request body must be a JSON object",
            );
        }
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("request body is not valid JSON: {err}"),
            );
        }
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_MODEL)
        .to_owned();
    let streaming = request.get("stream").and_then(Value::as_bool) == Some(true);
    let id = match &opts.id {
        Some(fixed) => format!("resp_{fixed}"),
        None => format!("resp_mock{seq}"),
    };
    let input_tokens = u64::try_from(body.len() / 4).unwrap_or(u64::MAX);
    let reasoning_tokens = u64::try_from(opts.reasoning).unwrap_or(u64::MAX);
    let output_tokens = u64::try_from(opts.chunks)
        .unwrap_or(u64::MAX)
        .saturating_add(reasoning_tokens);
    let usage = (opts.usage != UsageMode::None).then(|| {
        json!({
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": opts.cached_tokens.min(input_tokens)},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens.saturating_add(output_tokens),
        })
    });
    if let Some(previous) = request.get("previous_response_id").and_then(Value::as_str)
        && !lock(&shared.kept).map.contains_key(previous)
    {
        // The API's answer (as kimi-dialects `responses/state.rs` documents it).
        let body = json!({"error": {
            "message": format!("Previous response with id '{previous}' not found."),
            "type": "invalid_request_error", "param": "previous_response_id",
            "code": "previous_response_not_found"}});
        let mut response = json_body_response(Body::from(to_json_bytes(&body)));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let store = request.get("store").and_then(Value::as_bool) != Some(false);
    let background = request.get("background").and_then(Value::as_bool) == Some(true);
    let input = input_items(request.get("input"), &id);
    let mut echo = request;
    echo.remove("input");
    echo.remove("model");
    let plan = Plan {
        id,
        model,
        echo,
        chunks: opts.chunks,
        reasoning: opts.reasoning,
        tool_call: opts.tool_call,
        usage,
        body_kb: opts.body_kb,
    };

    if background && !streaming {
        let mut queued = plan.response("queued", Vec::new(), None);
        queued["background"] = Value::Bool(true);
        lock(&shared.kept).put(queued.clone(), input);
        return json_body_response(Body::from(to_json_bytes(&queued)));
    }
    let keep = store.then(|| (Arc::clone(&shared.kept), input));
    if streaming {
        let stream = event_stream(plan, opts, shared.stats.clone(), shutdown, keep);
        let mut response = with_content_type(
            Response::new(Body::from_stream(stream)),
            "text/event-stream",
        );
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }

    let answer = plan.response("completed", plan.output(), plan.usage.clone());
    let bytes = to_json_bytes(&answer);
    if let Some((kept, input)) = keep
        && opts.fault.is_none()
    {
        lock(&kept).put(answer, input);
    }
    match opts.fault {
        Some(Fault::CloseMidStream) => {
            let half = bytes.slice(..bytes.len() / 2);
            let abort = async {
                tokio::time::sleep(FLUSH_GRACE).await;
                Err::<Bytes, io::Error>(io::Error::other("mock fault: close-mid-stream"))
            };
            let items = futures_util::stream::once(async move { Ok::<Bytes, io::Error>(half) })
                .chain(futures_util::stream::once(abort));
            json_body_response(Body::from_stream(items))
        }
        Some(Fault::Stall) => {
            let mut shutdown = shutdown;
            let stalled = futures_util::stream::once(async move {
                wait_shutdown(&mut shutdown).await;
                Err::<Bytes, io::Error>(shutdown_error())
            });
            json_body_response(Body::from_stream(stalled))
        }
        _ => json_body_response(Body::from(bytes)),
    }
}

struct State {
    plan: Plan,
    pos: usize,
    finished: bool,
    fault: Option<Fault>,
    ttft: std::time::Duration,
    chunk_delay: std::time::Duration,
    guard: StreamGuard,
    shutdown: watch::Receiver<bool>,
    keep: Option<Keep>,
}

type Item = Result<Bytes, io::Error>;

async fn next(mut st: State) -> Option<(Item, State)> {
    if st.finished {
        return None;
    }
    let Some(event) = st.plan.event_at(st.pos) else {
        st.finished = true;
        st.guard.complete();
        return None;
    };
    if st.fault == Some(Fault::Stall) && st.pos == 2 {
        // `response.created` and `.in_progress` went out; nothing more until shutdown.
        wait_shutdown(&mut st.shutdown).await;
        st.finished = true;
        return Some((Err(shutdown_error()), st));
    }
    let delay = match event {
        Event::Created => st.ttft,
        Event::SummaryDelta(_) | Event::TextDelta(_) | Event::ArgsDelta(_) => st.chunk_delay,
        _ => std::time::Duration::ZERO,
    };
    if !sleep_or_shutdown(delay, &mut st.shutdown).await {
        st.guard.settle();
        st.finished = true;
        return Some((Err(shutdown_error()), st));
    }
    if st.fault == Some(Fault::CloseMidStream) && st.pos == st.plan.cut_position() {
        let _ = sleep_or_shutdown(FLUSH_GRACE, &mut st.shutdown).await;
        st.finished = true;
        return Some((Err(io::Error::other("mock fault: close-mid-stream")), st));
    }
    let frame = st.plan.render(st.pos, event);
    if event == Event::Completed {
        st.finished = true;
        st.guard.complete();
        if let Some((kept, input)) = st.keep.take() {
            let mut streamed = st.plan.clone();
            streamed.body_kb = None;
            let response = streamed.response("completed", streamed.output(), st.plan.usage.clone());
            lock(&kept).put(response, input);
        }
    }
    st.pos += 1;
    Some((Ok(frame), st))
}

fn event_stream(
    plan: Plan,
    opts: &MockOptions,
    stats: Arc<MockStats>,
    shutdown: watch::Receiver<bool>,
    keep: Option<Keep>,
) -> impl Stream<Item = Item> + Send + 'static {
    let fault = opts
        .fault
        .filter(|f| matches!(f, Fault::CloseMidStream | Fault::Stall));
    let mut guard = StreamGuard::start(stats);
    if fault.is_some() {
        guard.settle();
    }
    let state = State {
        plan,
        pos: 0,
        finished: false,
        fault,
        ttft: opts.ttft,
        chunk_delay: opts.chunk_delay,
        guard,
        shutdown,
        keep,
    };
    futures_util::stream::unfold(state, next)
}

/// The request's `input` as the API lists it: a string is one user message of an `input_text` part; a message
/// with string content gets that content as one part; every item has an `id` (`msg_<response>_in<n>` when it
/// had none).
fn input_items(input: Option<&Value>, response_id: &str) -> Vec<Value> {
    let base = response_id.strip_prefix("resp_").unwrap_or(response_id);
    let items = match input {
        Some(Value::String(text)) => {
            vec![json!({"type": "message", "role": "user", "content": text})]
        }
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(n, mut item)| {
            if let Value::Object(map) = &mut item {
                let is_message =
                    map.get("type").is_none_or(|t| t == "message") && map.contains_key("role");
                if is_message {
                    map.insert("type".into(), json!("message"));
                    if let Some(Value::String(text)) = map.get("content") {
                        let part = json!([{"type": "input_text", "text": text}]);
                        map.insert("content".into(), part);
                    }
                    map.entry("status").or_insert(json!("completed"));
                }
                map.entry("id")
                    .or_insert_with(|| Value::String(format!("msg_{base}_in{n}")));
            }
            item
        })
        .collect()
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("Response with id '{id}' not found."),
    )
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error",
                                "param": null, "code": null}});
    let mut response = json_body_response(Body::from(to_json_bytes(&body)));
    *response.status_mut() = status;
    response
}

/// `/responses/{id}` or `/responses/{id}/{cancel|input_items}`: the id and the sub-resource.
pub(crate) fn stored_route(route: &str) -> Option<(&str, Option<&str>)> {
    let rest = route.strip_prefix("/responses/")?;
    let (id, sub) = match rest.split_once('/') {
        Some((id, sub @ ("cancel" | "input_items"))) => (id, Some(sub)),
        Some(_) => return None,
        None => (rest, None),
    };
    (!id.is_empty()).then_some((id, sub))
}

/// The methods each stored-response route takes.
pub(crate) fn stored_method_ok(method: &Method, sub: Option<&str>) -> bool {
    match sub {
        None => *method == Method::GET || *method == Method::DELETE,
        Some("cancel") => *method == Method::POST,
        _ => *method == Method::GET,
    }
}

/// Answers the stored-response routes (the common checks passed).
pub(crate) fn stored(
    shared: &Shared,
    method: &Method,
    id: &str,
    sub: Option<&str>,
    query: Option<&str>,
) -> Response {
    let mut kept = lock(&shared.kept);
    if *method == Method::DELETE {
        if !kept.remove(id) {
            return not_found(id);
        }
        let body = json!({"id": id, "object": "response", "deleted": true});
        return json_body_response(Body::from(to_json_bytes(&body)));
    }
    let Some(entry) = kept.map.get_mut(id) else {
        return not_found(id);
    };
    match sub {
        None => json_body_response(Body::from(to_json_bytes(&entry.response))),
        Some("cancel") => {
            let status = entry.response.get("status").and_then(Value::as_str);
            match status {
                Some("queued" | "in_progress") => {
                    entry.response["status"] = json!("cancelled");
                }
                Some("cancelled") => {}
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "Cannot cancel a synchronous response.",
                    );
                }
            }
            json_body_response(Body::from(to_json_bytes(&entry.response)))
        }
        _ => {
            let page = list_page(&entry.input, query);
            json_body_response(Body::from(to_json_bytes(&page)))
        }
    }
}

/// A list page of `items` for the query's `limit` (1–100, default 20), `order` (default `desc`) and `after`.
fn list_page(items: &[Value], query: Option<&str>) -> Value {
    let param = |name: &str| {
        query?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_owned())
    };
    let limit = param("limit")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let mut page: Vec<&Value> = items.iter().collect();
    if param("order").as_deref() != Some("asc") {
        page.reverse();
    }
    if let Some(after) = param("after")
        && let Some(at) = page
            .iter()
            .position(|item| item.get("id").and_then(Value::as_str) == Some(after.as_str()))
    {
        page.drain(..=at);
    }
    let has_more = page.len() > limit;
    page.truncate(limit);
    json!({
        "object": "list",
        "data": page,
        "first_id": page.first().and_then(|i| i.get("id")),
        "last_id": page.last().and_then(|i| i.get("id")),
        "has_more": has_more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(reasoning: usize, tool_call: bool) -> Plan {
        Plan {
            id: "resp_t".into(),
            model: "m".into(),
            echo: Map::new(),
            chunks: 2,
            reasoning,
            tool_call,
            usage: None,
            body_kb: None,
        }
    }

    #[test]
    fn event_order() {
        use Event::*;
        let p = plan(1, true);
        let events: Vec<Event> = (0..).map_while(|i| p.event_at(i)).collect();
        assert_eq!(
            events,
            vec![
                Created,
                InProgress,
                ReasoningAdded,
                SummaryPartAdded,
                SummaryDelta(0),
                SummaryTextDone,
                SummaryPartDone,
                ReasoningDone,
                MessageAdded,
                PartAdded,
                TextDelta(0),
                TextDelta(1),
                TextDone,
                PartDone,
                MessageDone,
                CallAdded,
                ArgsDelta(0),
                ArgsDelta(1),
                ArgsDelta(2),
                ArgsDone,
                CallDone,
                Completed,
            ]
        );
        let p = plan(0, false);
        assert_eq!((0..).map_while(|i| p.event_at(i)).count(), 2 + 7 + 1);
    }
}
