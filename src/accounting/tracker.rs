//! Follows one request's answer as it passes through the proxy: counts streamed output incrementally, keeps
//! (bounded) non-streamed bodies to read their usage, removes the usage chunk the proxy itself asked for, and
//! finishes the record when the answer ends, fails, or the client leaves.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::record::{RequestRecord, accuracy, cost_usd};
use std::sync::atomic::{AtomicU64, Ordering};

use super::in_flight::LiveRequest;
use super::{Accounting, ModelTokenizer, PromptCounting};
use crate::config::Model;
use crate::monitor::Metric;
use crate::tokens::Tokenizer;
use crate::tokens::chat::PromptCount;
use crate::tokens::stream::{
    AnswerFormat, CompletionCounter, EventKind, SseParser, responses_finish_reason,
};
use crate::tokens::usage::{self, ReportedUsage};

/// Largest SSE event that is parsed (bigger ones pass through uncounted).
const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Largest non-streamed body kept to read its usage (bigger ones pass through uncounted).
const MAX_JSON_BYTES: usize = 2 * 1024 * 1024;
/// Longest a finished record waits to hear how a translated answer ended for its client (the translation
/// runs right after the tracker saw each frame, so in practice it waits for no more than the last frame).
const CLIENT_SAW_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How an answer ended for its client when a translation after the tracker changed that: a stream ended by
/// `response.failed` (status 200, as sent), or an answer the translation refused (the error status the client
/// got). The record says this rather than what the provider sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSaw {
    pub status: u16,
    pub error_kind: &'static str,
}

/// Where the adapter after the tracker tells the record how the answer ended for the client (`None`: as the
/// provider sent it). A sender dropped unsent means the same.
pub type ClientSawSender = tokio::sync::oneshot::Sender<Option<ClientSaw>>;

/// What is known about a request before its answer starts.
pub struct RequestContext {
    pub id: u64,
    pub started: Instant,
    pub started_at_ms: i64,
    pub model: Arc<Model>,
    pub tokenizer: ModelTokenizer,
    pub streaming: bool,
    pub attempts: u32,
    pub upstream_attempts: Vec<crate::accounting::record::UpstreamAttempt>,
    pub tool_call_fixes: u32,
    pub usage_injected: bool,
    pub status: u16,
    pub upstream_headers_us: Option<u64>,
    pub upstream_us: Option<u64>,
    pub overhead_us: Option<u64>,
    /// The conversation id the client gave (`X-Session-Id`, `metadata.session_id`, `user`).
    pub client_session: Option<String>,
    /// The name of the virtual key the client authenticated with.
    pub virtual_key: Option<String>,
    /// The application that sent the request (from its headers).
    pub client_app: Option<String>,
    /// The API the client spoke (`chat`, `messages`, `responses`).
    pub client_api: &'static str,
    /// The API the provider answers in (what the tracker reads): chat completions, or Responses for a
    /// Responses request passed through to a provider that speaks it.
    pub answer_format: AnswerFormat,
    /// Tools of the client's request the translation to the provider's API dropped (hosted tools a chat
    /// provider cannot run).
    pub dropped_tools: u32,
    /// Request fields, `anthropic-beta` features and content parts the provider does not take, removed.
    pub dropped_fields: u32,
    /// The provider answers in Anthropic's Messages format (an Anthropic-native provider), not chat's.
    pub provider_messages: bool,
    /// Told of a complete, successful non-streaming answer with its counts (the response cache keeps it).
    pub on_complete: Option<Box<dyn CompletionHook>>,
    /// Sees the answer as it passes (a proxy feature that learns from answers).
    pub observer: Option<Box<dyn AnswerObserver>>,
    /// The answer came from the response cache.
    pub cache_hit: bool,
    /// Set when a translation after the tracker decides how the answer ends for the client: the record waits
    /// (bounded) for its word.
    pub client_saw: Option<tokio::sync::oneshot::Receiver<Option<ClientSaw>>>,
    /// What the context transforms (masking, observation masking, compaction) saved.
    pub savings: Option<Box<crate::context::Outcome>>,
}

impl RequestContext {
    /// A request to `model` whose answer has not started: every figure still unknown.
    pub fn new(
        id: u64,
        started: Instant,
        started_at_ms: i64,
        model: Arc<Model>,
        tokenizer: ModelTokenizer,
        streaming: bool,
    ) -> RequestContext {
        RequestContext {
            id,
            started,
            started_at_ms,
            model,
            tokenizer,
            streaming,
            attempts: 0,
            upstream_attempts: Vec::new(),
            tool_call_fixes: 0,
            usage_injected: false,
            status: 0,
            upstream_headers_us: None,
            upstream_us: None,
            overhead_us: None,
            client_session: None,
            virtual_key: None,
            client_app: None,
            client_api: "chat",
            answer_format: AnswerFormat::Chat,
            dropped_tools: 0,
            dropped_fields: 0,
            provider_messages: false,
            on_complete: None,
            observer: None,
            cache_hit: false,
            client_saw: None,
            savings: None,
        }
    }
}

/// Receives a complete, successful non-streaming answer and what its record counted (the proxy's response
/// cache implements it; accounting knows nothing of caches).
pub trait CompletionHook: Send + Sync {
    fn complete(&self, body: Bytes, counts: StoredCounts);
}

/// Sees the provider's answer as it passes: each event's data of a stream, or the whole JSON body (when it is
/// within the size kept for reading usage). Only while token accounting reads the answer.
pub trait AnswerObserver: Send + Sync {
    fn on_event(&mut self, data: &[u8]);
    fn on_json(&mut self, body: &[u8]);
    /// The answer ended; `complete` when normally with a success status.
    fn finish(&mut self, complete: bool);
}

/// How a request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Complete,
    UpstreamFailed(String),
    IdleTimeout,
    ClientGone,
    /// The client stopped reading the answer for longer than `[server] write_timeout_ms`: cut.
    ClientTooSlow,
    /// The proxy answered with its own error (code of `ProxyError`).
    ProxyError(&'static str),
}

enum Mode {
    /// Token accounting is off: frames are only timed.
    Off,
    Sse {
        parser: SseParser,
        counter: Box<CompletionCounter>,
        /// Drop the usage-only event (the proxy added `include_usage`, the client did not ask for it).
        strip_usage: bool,
        /// Raw bytes of the event in progress, held back while stripping.
        held: BytesMut,
    },
    Json {
        chunks: Vec<Bytes>,
        bytes: usize,
        overflow: bool,
    },
    /// A cache hit whose figures were stored with the answer: nothing to read.
    Known(Completion),
}

/// What a stored answer's record counted, kept with it in the response cache. The cache key covers every field
/// that the counts read, so a hit would count exactly the same again.
#[derive(Debug, Clone)]
pub struct StoredCounts {
    prompt: PromptCount,
    completion: Completion,
}

pub struct Tracker {
    accounting: Arc<Accounting>,
    live: Arc<LiveRequest>,
    context: Option<RequestContext>,
    prompt: Option<PromptCounting>,
    mode: Mode,
    first_byte: Option<Instant>,
    last_frame: Option<Instant>,
    response_bytes: u64,
    observer: Option<Box<dyn AnswerObserver>>,
}

impl Tracker {
    pub fn new(
        accounting: Arc<Accounting>,
        context: RequestContext,
        prompt: PromptCounting,
        event_stream: bool,
        counting: bool,
    ) -> Tracker {
        let mode = if !counting {
            Mode::Off
        } else if event_stream {
            Mode::Sse {
                parser: SseParser::new(MAX_EVENT_BYTES),
                counter: Box::new(if context.provider_messages {
                    CompletionCounter::messages(context.tokenizer.tokenizer.clone())
                } else {
                    CompletionCounter::with_format(
                        context.tokenizer.tokenizer.clone(),
                        context.answer_format,
                    )
                }),
                strip_usage: context.usage_injected,
                held: BytesMut::new(),
            }
        } else {
            Mode::Json {
                chunks: Vec::new(),
                bytes: 0,
                overflow: false,
            }
        };
        let live = Arc::new(LiveRequest {
            id: context.id,
            started_at_ms: context.started_at_ms,
            model: context.model.key.clone(),
            provider: context.model.provider.clone(),
            streaming: context.streaming,
            completion_tokens: AtomicU64::new(0),
        });
        accounting.in_flight.insert(Arc::clone(&live));
        let mut context = context;
        let observer = context.observer.take();
        Tracker {
            accounting,
            live,
            context: Some(context),
            prompt: Some(prompt),
            mode,
            first_byte: None,
            last_frame: None,
            response_bytes: 0,
            observer,
        }
    }

    /// Follows an answer replayed from the response cache with its stored figures: a hit counts nothing.
    pub fn replayed(
        accounting: Arc<Accounting>,
        context: RequestContext,
        counts: &StoredCounts,
    ) -> Tracker {
        let mut prompt = counts.prompt.clone();
        prompt.cache_hits = 0;
        prompt.cache_misses = 0;
        let streaming = context.streaming;
        let mut tracker = Tracker::new(
            accounting,
            context,
            PromptCounting::Done((prompt, 0)),
            streaming,
            false,
        );
        tracker.mode = Mode::Known(counts.completion.clone());
        tracker
    }

    /// Sees one frame of the answer. Returns `None` to forward the frame as it is (the usual case, zero-copy),
    /// or the bytes to forward instead (possibly empty) when an event had to be removed.
    pub fn on_data(&mut self, data: &Bytes) -> Option<Bytes> {
        let now = Instant::now();
        if self.first_byte.is_none() {
            self.first_byte = Some(now);
        }
        if let (Some(last), Mode::Sse { .. }) = (self.last_frame, &self.mode) {
            let gap = now.duration_since(last).as_micros() as u64;
            self.accounting.monitor.record(Metric::InterChunkGap, gap);
        }
        self.last_frame = Some(now);
        self.response_bytes += data.len() as u64;
        let observer = &mut self.observer;
        match &mut self.mode {
            Mode::Off | Mode::Known(_) => None,
            Mode::Json {
                chunks,
                bytes,
                overflow,
            } => {
                if !*overflow {
                    if *bytes + data.len() > MAX_JSON_BYTES {
                        *overflow = true;
                        chunks.clear();
                    } else {
                        *bytes += data.len();
                        chunks.push(data.clone());
                    }
                }
                None
            }
            Mode::Sse {
                parser,
                counter,
                strip_usage: false,
                ..
            } => {
                parser.feed(data, |event| {
                    counter.on_event(event.data);
                    if let Some(observer) = observer.as_mut() {
                        observer.on_event(event.data);
                    }
                });
                None
            }
            Mode::Sse {
                parser,
                counter,
                strip_usage: true,
                held,
            } => {
                let mut output = BytesMut::new();
                let mut last_end = 0;
                parser.feed(data, |event| {
                    let kind = counter.on_event(event.data);
                    if let Some(observer) = observer.as_mut() {
                        observer.on_event(event.data);
                    }
                    if kind == EventKind::UsageOnly {
                        held.clear();
                    } else {
                        output.extend_from_slice(held);
                        held.clear();
                        output.extend_from_slice(&data[last_end..event.end]);
                    }
                    last_end = event.end;
                });
                held.extend_from_slice(&data[last_end..]);
                if held.len() > MAX_EVENT_BYTES {
                    // Not an event stream we understand: stop holding anything back.
                    output.extend_from_slice(held);
                    held.clear();
                }
                self.live
                    .completion_tokens
                    .store(counter.running(), Ordering::Relaxed);
                if output.len() == data.len() {
                    None
                } else {
                    Some(output.freeze())
                }
            }
        }
    }

    /// Bytes held back at the end of the stream (an unterminated last event): forwarded as they are.
    pub fn take_held(&mut self) -> Option<Bytes> {
        match &mut self.mode {
            Mode::Sse { held, .. } if !held.is_empty() => Some(held.split().freeze()),
            _ => None,
        }
    }

    /// Tokens counted so far in a stream (for live progress).
    pub fn running_completion(&self) -> u64 {
        match &self.mode {
            Mode::Sse { counter, .. } => counter.running(),
            Mode::Known(completion) => completion.total,
            Mode::Json { .. } | Mode::Off => 0,
        }
    }

    /// Finishes the record (once). The prompt count is joined and the completion figures settled on a task of
    /// its own: by then the tokenizer is decoded (the prompt count did it off the async workers).
    pub fn finish(&mut self, outcome: Outcome) {
        let Some(context) = self.context.take() else {
            return;
        };
        self.accounting.in_flight.remove(context.id);
        let prompt = self.prompt.take();
        let ended = Instant::now();
        let mode = std::mem::replace(
            &mut self.mode,
            Mode::Json {
                chunks: Vec::new(),
                bytes: 0,
                overflow: true,
            },
        );
        let latency_us = ended.duration_since(context.started).as_micros() as u64;
        let ttft_us = self
            .first_byte
            .map(|t| t.duration_since(context.started).as_micros() as u64);
        let response_bytes = self.response_bytes;
        let accounting = Arc::clone(&self.accounting);
        let mut observer = self.observer.take();
        let mut context = context;
        let job = async move {
            let client_saw = match context.client_saw.take() {
                Some(word) => tokio::time::timeout(CLIENT_SAW_WAIT, word)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten(),
                None => None,
            };
            let (prompt, counting_us) = match prompt {
                Some(counting) => counting.resolve().await,
                None => (PromptCount::default(), 0),
            };
            // Only a complete, successful answer is stored or learnt from; errors never are.
            let complete = matches!(outcome, Outcome::Complete) && context.status == 200;
            let completion = match mode {
                Mode::Off => Completion::default(),
                Mode::Known(completion) => completion,
                Mode::Sse { mut counter, .. } => {
                    let tokens = counter.finish();
                    Completion {
                        total: tokens.total(),
                        reasoning: tokens.reasoning,
                        usage: counter.usage,
                        finish_reason: counter.finish_reason.take(),
                        unreadable: counter.understood == 0 && response_bytes > 0,
                    }
                }
                Mode::Json {
                    chunks, overflow, ..
                } => {
                    if overflow {
                        Completion::default()
                    } else {
                        let body: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                        let tokenizer = &context.tokenizer.tokenizer;
                        let completion = if context.provider_messages {
                            messages_completion(&body, tokenizer)
                        } else {
                            match context.answer_format {
                                AnswerFormat::Chat => json_completion(&body, tokenizer),
                                AnswerFormat::Responses => response_completion(&body, tokenizer),
                            }
                        };
                        if let Some(observer) = observer.as_mut() {
                            observer.on_json(&body);
                        }
                        if let Some(hook) = &context.on_complete
                            && complete
                            && completion.finish_reason.is_some()
                        {
                            let counts = StoredCounts {
                                prompt: prompt.clone(),
                                completion: completion.clone(),
                            };
                            hook.complete(Bytes::from(body), counts);
                        }
                        completion
                    }
                }
            };
            if let Some(observer) = observer.as_mut() {
                observer.finish(complete);
            }
            let finished = Finished {
                latency_us,
                ttft_us,
                response_bytes,
                outcome,
                completion,
                client_saw,
            };
            let record = build_record(&accounting, context, prompt, counting_us, finished);
            tracing::debug!(
                id = record.id,
                model = %record.model,
                status = record.status,
                prompt = record.prompt_tokens,
                completion = record.completion_tokens,
                estimated = record.tokens_estimated,
                "request recorded"
            );
            accounting.record(record);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // In the request's span: its log lines name the instance too.
                runtime.spawn(tracing::Instrument::instrument(
                    job,
                    tracing::Span::current(),
                ));
            }
            Err(_) => tracing::debug!("no runtime left to finish a record"),
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.finish(Outcome::ClientGone);
    }
}

#[derive(Debug, Default, Clone)]
struct Completion {
    total: u64,
    reasoning: u64,
    usage: Option<ReportedUsage>,
    finish_reason: Option<String>,
    /// An event stream with bytes but not one event the counter understood (garbage from upstream).
    unreadable: bool,
}

struct Finished {
    latency_us: u64,
    ttft_us: Option<u64>,
    response_bytes: u64,
    outcome: Outcome,
    completion: Completion,
    client_saw: Option<ClientSaw>,
}

/// Reads a whole chat completion: the provider's usage and our own count of what it generated.
fn json_completion(body: &[u8], tokenizer: &Tokenizer) -> Completion {
    let usage = usage::from_completion_body(body);
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Completion {
            usage,
            ..Default::default()
        };
    };
    let mut completion = Completion {
        usage,
        ..Default::default()
    };
    for choice in value
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if completion.finish_reason.is_none() {
            completion.finish_reason = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        let Some(message) = choice.get("message") else {
            continue;
        };
        if let Some(text) = message.get("content").and_then(Value::as_str) {
            completion.total += tokenizer.count(text) as u64;
        }
        if let Some(text) = message
            .get("reasoning_content")
            .or_else(|| message.get("reasoning"))
            .and_then(Value::as_str)
        {
            let reasoning = tokenizer.count(text) as u64;
            completion.reasoning += reasoning;
            completion.total += reasoning;
        }
        for call in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let function = call.get("function");
            for field in ["name", "arguments"] {
                if let Some(text) = function.and_then(|f| f.get(field)).and_then(Value::as_str) {
                    completion.total += tokenizer.count(text) as u64;
                }
            }
        }
    }
    completion
}

/// Reads a whole Anthropic message (anthropics/anthropic-sdk-python `types/message.py`): its usage,
/// `stop_reason`, and our own count of its text, thinking and `tool_use` blocks.
fn messages_completion(body: &[u8], tokenizer: &Tokenizer) -> Completion {
    let mut completion = Completion {
        usage: usage::from_message_body(body),
        ..Default::default()
    };
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return completion;
    };
    completion.finish_reason = value
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(str::to_string);
    for block in value
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(text) = block.get("text").and_then(Value::as_str) {
                    completion.total += tokenizer.count(text) as u64;
                }
            }
            Some("thinking") => {
                if let Some(text) = block.get("thinking").and_then(Value::as_str) {
                    let reasoning = tokenizer.count(text) as u64;
                    completion.reasoning += reasoning;
                    completion.total += reasoning;
                }
            }
            Some("tool_use") => {
                if let Some(name) = block.get("name").and_then(Value::as_str) {
                    completion.total += tokenizer.count(name) as u64;
                }
                if let Some(input) = block.get("input") {
                    completion.total += tokenizer.count(&input.to_string()) as u64;
                }
            }
            _ => {}
        }
    }
    completion
}

/// Reads a whole Response object (the Responses API's JSON answer): the provider's usage and our own count
/// of its output items (message text and refusals, reasoning summaries and text, function calls' names and
/// arguments), as openai-python `types/responses/response.py` and `response_output_item.py` shape them.
fn response_completion(body: &[u8], tokenizer: &Tokenizer) -> Completion {
    let usage = usage::from_completion_body(body);
    let mut completion = Completion {
        usage,
        ..Default::default()
    };
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return completion;
    };
    let texts = |list: Option<&Value>, field: &str| -> u64 {
        list.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|part| part.get(field).and_then(Value::as_str))
            .map(|text| tokenizer.count(text) as u64)
            .sum()
    };
    let mut called = false;
    for item in value
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let content = item.get("content");
                completion.total += texts(content, "text") + texts(content, "refusal");
            }
            Some("reasoning") => {
                let reasoning =
                    texts(item.get("summary"), "text") + texts(item.get("content"), "text");
                completion.reasoning += reasoning;
                completion.total += reasoning;
            }
            Some("function_call") => {
                called = true;
                for field in ["name", "arguments"] {
                    if let Some(text) = item.get(field).and_then(Value::as_str) {
                        completion.total += tokenizer.count(text) as u64;
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(status) = value.get("status").and_then(Value::as_str) {
        let reason = value
            .get("incomplete_details")
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str);
        completion.finish_reason = responses_finish_reason(status, reason, called);
    }
    completion
}

fn build_record(
    accounting: &Accounting,
    context: RequestContext,
    mut prompt: PromptCount,
    counting_us: u64,
    finished: Finished,
) -> RequestRecord {
    let model = &context.model;
    let usage = finished.completion.usage.unwrap_or_default();
    let prompt_estimated = prompt.total;
    let (prompt_calibrated, calibration_ratio) = accounting.calibrate(&model.key, prompt_estimated);
    if let Some(reported) = usage.prompt {
        accounting.learn(&model.key, prompt_estimated, reported);
    }
    let completion_estimated = finished.completion.total;
    let prompt_tokens = usage.prompt.unwrap_or(prompt_calibrated);
    let completion_tokens = usage.completion.unwrap_or(completion_estimated);
    let tokens_estimated = usage.prompt.is_none() || usage.completion.is_none();
    let cached = usage.cached.unwrap_or(0);
    let cache_write = usage.cache_write.unwrap_or(0);
    let error_kind = match &finished.outcome {
        Outcome::Complete if context.status >= 400 => {
            Some(format!("upstream_http_{}", context.status))
        }
        Outcome::Complete if finished.completion.unreadable => {
            Some("upstream_unreadable_stream".to_string())
        }
        Outcome::Complete => None,
        Outcome::UpstreamFailed(_) => Some("upstream_stream_error".to_string()),
        Outcome::IdleTimeout => Some("upstream_idle_timeout".to_string()),
        Outcome::ClientGone => Some("client_disconnected".to_string()),
        Outcome::ClientTooSlow => Some("client_write_timeout".to_string()),
        Outcome::ProxyError(code) => Some((*code).to_string()),
    };
    // What the client saw, when a translation changed it; a more precise cause found above is kept.
    let (status, error_kind) = match &finished.client_saw {
        Some(saw) => (
            saw.status,
            error_kind.or_else(|| Some(saw.error_kind.to_string())),
        ),
        None => (context.status, error_kind),
    };
    // An upstream that failed before answering generated nothing billable we know of.
    let billable = !matches!(finished.outcome, Outcome::ProxyError(_))
        && context.status < 400
        && !context.cache_hit;
    let cost = if billable {
        cost_usd(
            &model.prices,
            prompt_tokens,
            cached,
            cache_write,
            completion_tokens,
        )
    } else {
        0.0
    };
    let tokens_saved = match &context.savings {
        Some(outcome) if billable => outcome.tokens_saved(),
        _ => 0,
    };
    let cost_saved_usd = tokens_saved as f64 * model.prices.input / 1_000_000.0;
    RequestRecord {
        id: context.id,
        instance: accounting.instance.clone(),
        started_at_ms: context.started_at_ms,
        model: model.key.clone(),
        provider: model.provider.clone(),
        upstream_model: model.upstream_id.clone(),
        streaming: context.streaming,
        status,
        error_kind,
        prompt_estimated,
        prompt_calibrated,
        calibration_ratio,
        prompt_reported: usage.prompt,
        completion_estimated,
        completion_reported: usage.completion,
        cached_reported: usage.cached,
        cache_write_reported: usage.cache_write,
        reasoning_estimated: finished.completion.reasoning,
        reasoning_reported: usage.reasoning,
        prompt_tokens,
        completion_tokens,
        tokens_estimated,
        prompt_accuracy: usage.prompt.and_then(|r| accuracy(prompt_estimated, r)),
        completion_accuracy: usage
            .completion
            .and_then(|r| accuracy(completion_estimated, r)),
        tokenizer: context.tokenizer.tokenizer.name().to_string(),
        tokenizer_exact: context.tokenizer.exact,
        message_hashes: std::mem::take(&mut prompt.message_hashes),
        preview: prompt.preview.take(),
        client_session: context.client_session,
        virtual_key: context.virtual_key,
        client_app: context.client_app,
        client_api: context.client_api,
        dropped_tools: context.dropped_tools,
        dropped_fields: context.dropped_fields,
        prompt_breakdown: prompt,
        cost_usd: cost,
        cost_estimated: billable && tokens_estimated,
        counting_us,
        latency_us: finished.latency_us,
        ttft_us: finished.ttft_us,
        upstream_headers_us: context.upstream_headers_us,
        upstream_us: context.upstream_us,
        overhead_us: context.overhead_us,
        attempts: context.attempts,
        upstream_attempts: context.upstream_attempts,
        tool_call_fixes: context.tool_call_fixes,
        usage_injected: context.usage_injected,
        cache_hit: context.cache_hit,
        context: context.savings,
        tokens_saved,
        cost_saved_usd,
        finish_reason: finished.completion.finish_reason,
        response_bytes: finished.response_bytes,
    }
}

/// Records a request that the proxy answered with its own error after the model was known.
pub fn record_proxy_error(
    accounting: &Arc<Accounting>,
    context: RequestContext,
    prompt: PromptCounting,
    code: &'static str,
    status: u16,
) {
    let mut context = context;
    context.status = status;
    let mut tracker = Tracker::new(Arc::clone(accounting), context, prompt, false, true);
    tracker.finish(Outcome::ProxyError(code));
}
