//! The single request handler: records the request, then dispatches on
//! method and path (`/v1` prefix optional).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::options::{Fault, MockOptions, UsageMode};
use crate::payload::{
    CREATED, ChatCompletion, Choice, DEFAULT_MODEL, ErrorBody, ErrorDetail, Message, ModelList,
    ToolCall, Usage, full_text, pad_to_kb, reasoning_text,
};
use crate::stream::{
    FLUSH_GRACE, SsePlan, StreamFault, shutdown_error, sleep_or_shutdown, sse_stream, wait_shutdown,
};
use crate::{MockStats, RecordedRequest, Shared};

/// Largest request body accepted (and recorded).
const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;
/// How long `stall-headers` withholds the response.
const STALL_HEADERS_FOR: Duration = Duration::from_secs(3600);

const GARBAGE_BODY: &[u8] = b"this is not SSE\n\x00\xff{{{\n\n";

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let seq = shared.next_id();
    MockStats::bump(&shared.stats.requests);
    let (parts, body) = req.into_parts();
    let (body, too_large) = match to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(bytes) => (bytes, false),
        Err(_) => (Bytes::new(), true),
    };
    shared.record(recorded(&parts, body.clone()));
    tracing::debug!(seq, method = %parts.method, path = parts.uri.path(), "mock request");

    let mut response = if too_large {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large or unreadable",
        )
    } else {
        respond(&shared, seq, &parts, body).await
    };
    // Only when asked: a real provider does not echo keys, and the proxy's removal of them is a cost the
    // benchmarks should not pay on every answer.
    let echo = parts
        .headers
        .contains_key(ECHO_AUTHORIZATION)
        .then(|| parts.headers.get(AUTHORIZATION))
        .flatten();
    decorate(response.headers_mut(), seq, echo);
    response
}

fn recorded(parts: &Parts, body: Bytes) -> RecordedRequest {
    RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    }
}

/// Asks the mock to echo the request's `Authorization` in a response header of the same name.
const ECHO_AUTHORIZATION: &str = "x-mock-echo-authorization";

/// Headers present on every response.
fn decorate(headers: &mut HeaderMap, seq: u64, authorization: Option<&HeaderValue>) {
    if let Ok(id) = HeaderValue::from_str(&format!("mock-{seq}")) {
        headers.insert(HeaderName::from_static("x-request-id"), id);
    }
    headers.insert(
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderValue::from_static("99"),
    );
    headers.insert(
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderValue::from_static("100"),
    );
    if let Some(auth) = authorization {
        headers.insert(HeaderName::from_static(ECHO_AUTHORIZATION), auth.clone());
    }
}

async fn respond(shared: &Shared, seq: u64, parts: &Parts, body: Bytes) -> Response {
    let opts = MockOptions::from_headers(&parts.headers, &shared.config);
    let mut shutdown = shared.shutdown_rx();

    let path = parts.uri.path();
    let route = match path.strip_prefix("/v1") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    };
    let route = route.trim_end_matches('/');
    if let Some(anthropic) = crate::anthropic::route(route) {
        return crate::anthropic::respond(shared, seq, parts, body, &opts, anthropic).await;
    }
    let is_models = route == "/models";
    let is_chat = route == "/chat/completions";
    let is_responses = route == "/responses";
    let stored = crate::responses::stored_route(route);
    if !is_models && !is_chat && !is_responses && stored.is_none() {
        return error_response(StatusCode::NOT_FOUND, &format!("unknown route {path}"));
    }
    let method_ok = (is_models && parts.method == Method::GET)
        || ((is_chat || is_responses) && parts.method == Method::POST)
        || stored.is_some_and(|(_, sub)| crate::responses::stored_method_ok(&parts.method, sub));
    if !method_ok {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {} not allowed on {path}", parts.method),
        );
    }

    if let Some(key) = &shared.config.required_key {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(key.as_str()) {
            return error_response(StatusCode::UNAUTHORIZED, "Incorrect API key provided.");
        }
    }
    if !sleep_or_shutdown(opts.delay, &mut shutdown).await {
        return shutting_down();
    }
    if opts.fault == Some(Fault::StallHeaders) {
        sleep_or_shutdown(STALL_HEADERS_FOR, &mut shutdown).await;
        return shutting_down();
    }
    if let Some(status) = opts.status {
        let fail = match opts.fail_times {
            Some(times) => shared.should_fail(&opts.key, times),
            None => true,
        };
        if fail {
            let mut response = error_response(
                status,
                &format!("mock upstream error (status {})", status.as_u16()),
            );
            if let Some(retry_after) = opts.retry_after.clone() {
                response.headers_mut().insert(RETRY_AFTER, retry_after);
            }
            return response;
        }
    }
    if opts.fault == Some(Fault::Garbage) {
        return with_content_type(
            Response::new(Body::from(Bytes::from_static(GARBAGE_BODY))),
            "text/event-stream",
        );
    }

    if is_models {
        return json_response(StatusCode::OK, &ModelList::mock());
    }
    if let Some((id, sub)) = stored {
        return crate::responses::stored(shared, &parts.method, id, sub, parts.uri.query());
    }
    if is_responses {
        return crate::responses::respond(shared, seq, &opts, &body, shutdown);
    }
    chat_completions(shared, seq, &opts, &body, shutdown)
}

fn chat_completions(
    shared: &Shared,
    seq: u64,
    opts: &MockOptions,
    body: &Bytes,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Response {
    let request: Value = match serde_json::from_slice(body) {
        Ok(value @ Value::Object(_)) => value,
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
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let id = match &opts.id {
        Some(fixed) => format!("chatcmpl-{fixed}"),
        None => format!("chatcmpl-mock-{seq}"),
    };
    let prompt_tokens = u64::try_from(body.len() / 4).unwrap_or(u64::MAX);
    let completion_tokens = u64::try_from(opts.chunks).unwrap_or(u64::MAX);
    let usage_applies = match opts.usage {
        UsageMode::Always => true,
        UsageMode::None => false,
        UsageMode::Requested => !streaming || include_usage,
    };
    let usage = usage_applies.then(|| Usage::new(prompt_tokens, completion_tokens));

    if streaming {
        let plan = SsePlan {
            id,
            model,
            chunks: opts.chunks,
            reasoning: opts.reasoning,
            tool_call: opts.tool_call,
            usage,
            ttft: opts.ttft,
            chunk_delay: opts.chunk_delay,
            fault: match opts.fault {
                Some(Fault::CloseMidStream) => Some(StreamFault::CloseMidStream),
                Some(Fault::Stall) => Some(StreamFault::Stall),
                _ => None,
            },
        };
        let body = if opts.fixed_length && plan.fault.is_none() {
            shared.stats.streams_started.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .streams_completed
                .fetch_add(1, Ordering::Relaxed);
            Body::from(plan.render_whole())
        } else {
            Body::from_stream(sse_stream(plan, shared.stats.clone(), shutdown))
        };
        let mut response = with_content_type(Response::new(body), "text/event-stream");
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }

    let mut content = full_text(opts.chunks);
    if let Some(kb) = opts.body_kb {
        pad_to_kb(&mut content, kb);
    }
    let reasoning: Option<String> =
        (opts.reasoning > 0).then(|| (0..opts.reasoning).map(reasoning_text).collect());
    let completion = ChatCompletion {
        id: &id,
        object: "chat.completion",
        created: CREATED,
        model: &model,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content: &content,
                reasoning_content: reasoning.as_deref(),
                tool_calls: opts.tool_call.then(|| [ToolCall::mock()]),
            },
            finish_reason: if opts.tool_call { "tool_calls" } else { "stop" },
        }],
        usage,
    };
    let bytes = to_json_bytes(&completion);
    match opts.fault {
        Some(Fault::CloseMidStream) => {
            // Half of the JSON document, then abort the body.
            let half = bytes.slice(..bytes.len() / 2);
            let abort = async {
                // Let hyper flush the first half before the body fails.
                tokio::time::sleep(FLUSH_GRACE).await;
                Err::<Bytes, io::Error>(io::Error::other("mock fault: close-mid-stream"))
            };
            let items = futures_util::stream::once(async move { Ok::<Bytes, io::Error>(half) })
                .chain(futures_util::stream::once(abort));
            json_body_response(Body::from_stream(items))
        }
        Some(Fault::Stall) => {
            // Headers now, body never (until shutdown).
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

pub(crate) fn to_json_bytes<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value).map_or_else(|_| Bytes::from_static(b"{}"), Bytes::from)
}

pub(crate) fn with_content_type(mut response: Response, content_type: &'static str) -> Response {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn json_body_response(body: Body) -> Response {
    with_content_type(Response::new(body), "application/json")
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut response = json_body_response(Body::from(to_json_bytes(value)));
    *response.status_mut() = status;
    response
}

/// `(type, code)` of the OpenAI error object for `status`.
fn error_kind(status: StatusCode) -> (&'static str, Option<&'static str>) {
    match status.as_u16() {
        401 => ("invalid_api_key", Some("invalid_api_key")),
        403 => ("permission_error", None),
        404 => ("not_found_error", None),
        429 => ("rate_limit_exceeded", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    }
}

pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    let (kind, code) = error_kind(status);
    json_response(
        status,
        &ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                param: None,
                code,
            },
        },
    )
}

fn shutting_down() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "mock upstream shutting down",
    )
}
