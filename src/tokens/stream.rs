//! Streamed output: an incremental SSE parser and an incremental token counter, both linear in the total
//! input and bounded in memory.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::Tokenizer;
use super::usage::{MessagesUsage, ReportedUsage, WireMessagesUsage, WireUsage};

/// Counts tokens of a text that arrives in pieces, with a final count equal to counting the whole text at once.
///
/// BPE never merges across pre-tokenizer pieces, but the last pieces of a prefix may still change when more
/// text arrives (a word grows, a whitespace run extends). Holding back the last two pieces is enough for both
/// encodings (measured on 1 MiB and randomised chunkings; one piece is not). To stay linear when a single piece
/// grows without end (a megabyte of spaces), the pending text is only re-split once it has doubled since the
/// last split.
#[derive(Debug, Clone)]
pub struct IncrementalCounter {
    pending: String,
    counted: usize,
    /// Length of `pending` right after the last split.
    settled_len: usize,
}

/// Pieces held back at every split.
const HOLD_BACK: usize = 2;
/// Pending text shorter than this is never re-split: small deltas are only appended.
const MIN_RESPLIT: usize = 64;

impl Default for IncrementalCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl IncrementalCounter {
    pub fn new() -> Self {
        Self {
            pending: String::new(),
            counted: 0,
            settled_len: 0,
        }
    }

    pub fn push(&mut self, tokenizer: &Tokenizer, text: &str) {
        self.pending.push_str(text);
        // Amortised linear: split again only once the pending text has doubled since the last split. A
        // tokenizer still decoding its vocabulary is not waited for: the text is counted once it is ready.
        if self.pending.len() >= (2 * self.settled_len).max(MIN_RESPLIT) && tokenizer.is_ready() {
            self.settle(tokenizer);
        }
    }

    fn settle(&mut self, tokenizer: &Tokenizer) {
        let pieces: Vec<&str> = tokenizer.split(&self.pending).collect();
        if pieces.len() > HOLD_BACK {
            let done = &pieces[..pieces.len() - HOLD_BACK];
            let consumed: usize = done.iter().map(|p| p.len()).sum();
            self.counted += done.iter().map(|p| tokenizer.count_piece(p)).sum::<usize>();
            self.pending.drain(..consumed);
        }
        self.settled_len = self.pending.len();
    }

    /// Tokens counted so far (lags the text by at most a couple of pieces); cheap enough to read on every
    /// progress tick.
    pub fn counted(&self) -> usize {
        self.counted
    }

    /// The running count including an exact count of the held-back text.
    pub fn current(&self, tokenizer: &Tokenizer) -> usize {
        self.counted + tokenizer.count(&self.pending)
    }

    /// The final count.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> usize {
        self.counted += tokenizer.count(&self.pending);
        self.pending.clear();
        self.settled_len = 0;
        self.counted
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }
}

/// One complete SSE event found by [`SseParser::feed`].
pub struct SseEvent<'a> {
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
    /// Offset just past the blank line that ended the event, within the chunk being fed.
    pub end: usize,
}

/// An incremental `text/event-stream` parser (WHATWG rules: `\n`, `\r\n` and `\r` line ends, `data:` lines joined,
/// `:` comments and other fields ignored). Events larger than `max_event_bytes` are skipped, not buffered.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    last_was_cr: bool,
    oversized: bool,
    max_event_bytes: usize,
    pub skipped_events: u64,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            last_was_cr: false,
            oversized: false,
            max_event_bytes,
            skipped_events: 0,
        }
    }

    /// Feeds a chunk; calls `on_event` for every event that completes inside it.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        let mut pos = 0;
        if self.last_was_cr && chunk.first() == Some(&b'\n') {
            pos = 1; // the `\n` of a `\r\n` split across chunks
        }
        self.last_was_cr = false;
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            let Some(offset) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.append_line(rest);
                return;
            };
            self.append_line(&rest[..offset]);
            let mut next = pos + offset + 1;
            if rest[offset] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    None => self.last_was_cr = true,
                    Some(_) => {}
                }
            }
            if self.end_line() {
                if self.oversized {
                    self.skipped_events += 1;
                } else {
                    on_event(SseEvent {
                        data: &self.data,
                        end: next,
                    });
                }
                self.data.clear();
                self.has_data = false;
                self.oversized = false;
            }
            pos = next;
        }
    }

    fn append_line(&mut self, bytes: &[u8]) {
        if self.oversized {
            return;
        }
        if self.line.len() + self.data.len() + bytes.len() > self.max_event_bytes {
            self.oversized = true;
            self.line.clear();
            self.data.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// Handles a completed line; returns true when it was the blank line that ends an event with data.
    fn end_line(&mut self) -> bool {
        if self.line.is_empty() {
            return self.has_data || self.oversized;
        }
        if !self.oversized {
            let line = &self.line[..];
            if let Some(value) = line.strip_prefix(b"data") {
                let value = match value.first() {
                    None => Some(&value[..0]),
                    Some(b':') => Some(value[1..].strip_prefix(b" ").unwrap_or(&value[1..])),
                    Some(_) => None, // a field named e.g. `database`
                };
                if let Some(value) = value {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
            }
        }
        self.line.clear();
        false
    }
}

// === chat.completion.chunk, borrowed where possible ===

#[derive(Deserialize)]
struct WireChunk<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<WireChoice<'a>>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<WireDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    /// OpenRouter and some vLLM builds name it `reasoning`.
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<WireToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct WireToolCallDelta<'a> {
    #[serde(default)]
    index: Option<usize>,
    #[serde(borrow, default)]
    function: Option<WireFunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct WireFunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

// === Anthropic Messages events (anthropics/anthropic-sdk-python `types/raw_message_stream_event.py` and the
// `raw_*_event.py` files: `message_start.message.usage`, `content_block_start.content_block`,
// `content_block_delta.delta` of type `text_delta`/`thinking_delta`/`input_json_delta`, `message_delta.delta.stop_reason`
// with `message_delta.usage`, `message_stop`) ===

#[derive(Deserialize)]
struct WireMessagesEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    message: Option<WireStartMessage>,
    #[serde(default)]
    usage: Option<WireMessagesUsage>,
    #[serde(borrow, default)]
    delta: Option<WireMessagesDelta<'a>>,
    #[serde(borrow, default)]
    content_block: Option<WireMessagesBlock<'a>>,
}

#[derive(Deserialize)]
struct WireStartMessage {
    #[serde(default)]
    usage: Option<WireMessagesUsage>,
}

#[derive(Deserialize)]
struct WireMessagesDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireMessagesBlock<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
}

/// Most tool calls a stream may carry before further ones are ignored (bounds memory).
const MAX_TOOL_CALLS: usize = 128;
const MAX_TOOL_NAME_BYTES: usize = 16 * 1024;

/// What one parsed event meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A chunk with choices (content, reasoning, tool calls, or a finish reason).
    Delta,
    /// A chunk with `choices: []` and `usage`: what `stream_options.include_usage` adds.
    UsageOnly,
    Done,
    /// Not JSON, or not a chunk: passed on, not counted.
    Unparsed,
}

// === OpenAI Responses events, borrowed where possible ===
//
// Event shapes from openai-python `types/responses/response_stream_event.py` (each event's own module: `delta`
// and `output_index` on the delta events, `item` on `response.output_item.added`, the whole Response with
// `status`, `incomplete_details` and `usage` on `response.completed` / `.incomplete` / `.failed`).

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// Read as text only for the events counted (other events' `delta` may be something else).
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    #[serde(default)]
    output_index: Option<usize>,
    #[serde(borrow, default)]
    item: Option<WireItem<'a>>,
    #[serde(default)]
    response: Option<WireResponse>,
}

#[derive(Deserialize)]
struct WireItem<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    incomplete_details: Option<IncompleteDetails>,
}

#[derive(Deserialize)]
struct IncompleteDetails {
    #[serde(default)]
    reason: Option<String>,
}

/// A Responses answer's end in the chat finish reasons the records use: `completed` is `stop` (`tool_calls`
/// when it called a function), `incomplete` for `max_output_tokens` is `length`, for `content_filter` that;
/// `failed` is `failed`.
pub fn responses_finish_reason(
    status: &str,
    incomplete_reason: Option<&str>,
    called: bool,
) -> Option<String> {
    let reason = match (status, incomplete_reason) {
        ("completed", _) if called => "tool_calls",
        ("completed", _) => "stop",
        ("incomplete", Some("max_output_tokens")) => "length",
        ("incomplete", Some(other)) => other,
        ("incomplete", None) => "incomplete",
        ("failed", _) => "failed",
        ("cancelled", _) => "cancelled",
        _ => return None,
    };
    Some(reason.to_string())
}

/// The API an answer is in: what its events look like to the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerFormat {
    /// Chat completions chunks (`choices[].delta`, a usage chunk, `[DONE]`).
    #[default]
    Chat,
    /// OpenAI Responses events (`response.output_text.delta`, …, `response.completed` with `usage`).
    Responses,
}

/// Counts a streamed completion as it passes: content, reasoning and tool-call arguments, each with its own
/// incremental counter, plus the provider's usage if a chunk carries it.
#[derive(Debug)]
pub struct CompletionCounter {
    format: AnswerFormat,
    /// A Responses answer called a function (its finish reason is then `tool_calls`).
    called: bool,
    tokenizer: Tokenizer,
    content: IncrementalCounter,
    reasoning: IncrementalCounter,
    tool_arguments: Vec<IncrementalCounter>,
    /// Tool names, one per line, counted at the end (names are short and few).
    tool_names: String,
    pub usage: Option<ReportedUsage>,
    pub finish_reason: Option<String>,
    pub events: u64,
    /// Events that were chunks, usage or `[DONE]`: none in a non-empty stream means it was not one.
    pub understood: u64,
    pub done: bool,
    /// The stream is Anthropic's Messages events (an Anthropic-native provider), not chat chunks.
    messages: Option<MessagesUsage>,
}

/// Final figures of a completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompletionTokens {
    pub content: u64,
    pub reasoning: u64,
    pub tool_calls: u64,
}

impl CompletionTokens {
    pub fn total(&self) -> u64 {
        self.content + self.reasoning + self.tool_calls
    }
}

impl CompletionCounter {
    pub fn new(tokenizer: Tokenizer) -> Self {
        Self::with_format(tokenizer, AnswerFormat::Chat)
    }

    /// A counter for an answer in `format`.
    pub fn with_format(tokenizer: Tokenizer, format: AnswerFormat) -> Self {
        Self {
            format,
            called: false,
            tokenizer,
            content: IncrementalCounter::new(),
            reasoning: IncrementalCounter::new(),
            tool_arguments: Vec::new(),
            tool_names: String::new(),
            usage: None,
            finish_reason: None,
            events: 0,
            understood: 0,
            done: false,
            messages: None,
        }
    }

    /// A counter for an Anthropic Messages event stream.
    pub fn messages(tokenizer: Tokenizer) -> Self {
        Self {
            messages: Some(MessagesUsage::default()),
            ..Self::new(tokenizer)
        }
    }

    /// Accounts one SSE event's data.
    pub fn on_event(&mut self, data: &[u8]) -> EventKind {
        self.events += 1;
        let kind = self.account(data);
        if kind != EventKind::Unparsed {
            self.understood += 1;
        }
        kind
    }

    fn account(&mut self, data: &[u8]) -> EventKind {
        if self.messages.is_some() {
            return self.account_messages(data);
        }
        if self.format == AnswerFormat::Responses {
            return self.account_responses(data);
        }
        if data == b"[DONE]" {
            self.done = true;
            return EventKind::Done;
        }
        let Ok(chunk) = serde_json::from_slice::<WireChunk<'_>>(data) else {
            return EventKind::Unparsed;
        };
        if let Some(usage) = chunk.usage.as_ref().and_then(WireUsage::normalize) {
            self.usage = Some(usage);
        }
        let choices = chunk.choices.unwrap_or_default();
        if choices.is_empty() {
            return if chunk.usage.is_some() {
                EventKind::UsageOnly
            } else {
                EventKind::Unparsed
            };
        }
        for choice in choices {
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason.into_owned());
            }
            let Some(delta) = choice.delta else { continue };
            if let Some(text) = delta.content {
                self.content.push(&self.tokenizer, &text);
            }
            if let Some(text) = delta.reasoning_content.or(delta.reasoning) {
                self.reasoning.push(&self.tokenizer, &text);
            }
            for call in delta.tool_calls.unwrap_or_default() {
                let index = call.index.unwrap_or(0);
                if index >= MAX_TOOL_CALLS {
                    continue;
                }
                if self.tool_arguments.len() <= index {
                    self.tool_arguments
                        .resize_with(index + 1, IncrementalCounter::new);
                }
                if let Some(function) = call.function {
                    if let Some(name) = function.name
                        && self.tool_names.len() + name.len() < MAX_TOOL_NAME_BYTES
                    {
                        self.tool_names.push_str(&name);
                        self.tool_names.push('\n');
                    }
                    if let Some(arguments) = function.arguments {
                        self.tool_arguments[index].push(&self.tokenizer, &arguments);
                    }
                }
            }
        }
        EventKind::Delta
    }

    fn account_messages(&mut self, data: &[u8]) -> EventKind {
        let Ok(event) = serde_json::from_slice::<WireMessagesEvent<'_>>(data) else {
            return EventKind::Unparsed;
        };
        let mut usage = self.messages.unwrap_or_default();
        let kind = match &*event.kind {
            "message_start" => {
                if let Some(wire) = event.message.as_ref().and_then(|m| m.usage.as_ref()) {
                    usage.update(wire);
                }
                EventKind::Delta
            }
            "content_block_start" => {
                if let Some(block) = event.content_block {
                    if let Some(name) = block.name
                        && self.tool_names.len() + name.len() < MAX_TOOL_NAME_BYTES
                    {
                        self.tool_names.push_str(&name);
                        self.tool_names.push('\n');
                    }
                    if let Some(text) = block.text {
                        self.content.push(&self.tokenizer, &text);
                    }
                    if let Some(text) = block.thinking {
                        self.reasoning.push(&self.tokenizer, &text);
                    }
                }
                EventKind::Delta
            }
            "content_block_delta" => {
                if let Some(delta) = event.delta {
                    if let Some(text) = delta.text {
                        self.content.push(&self.tokenizer, &text);
                    }
                    if let Some(text) = delta.thinking {
                        self.reasoning.push(&self.tokenizer, &text);
                    }
                    if let Some(json) = delta.partial_json {
                        let index = event.index.unwrap_or(0);
                        if index < MAX_TOOL_CALLS {
                            if self.tool_arguments.len() <= index {
                                self.tool_arguments
                                    .resize_with(index + 1, IncrementalCounter::new);
                            }
                            self.tool_arguments[index].push(&self.tokenizer, &json);
                        }
                    }
                }
                EventKind::Delta
            }
            "message_delta" => {
                if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                    self.finish_reason = Some(reason.into_owned());
                }
                if let Some(wire) = &event.usage {
                    usage.update(wire);
                }
                EventKind::Delta
            }
            "message_stop" => {
                self.done = true;
                EventKind::Done
            }
            "ping" | "content_block_stop" | "error" => EventKind::Delta,
            _ => EventKind::Unparsed,
        };
        self.messages = Some(usage);
        if let Some(reported) = usage.normalize() {
            self.usage = Some(reported);
        }
        kind
    }

    /// One Responses event: its text deltas counted, the terminal event's usage and status read.
    fn account_responses(&mut self, data: &[u8]) -> EventKind {
        let Ok(event) = serde_json::from_slice::<WireEvent<'_>>(data) else {
            return EventKind::Unparsed;
        };
        let delta = || {
            event
                .delta
                .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
        };
        match event.kind.as_ref() {
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(text) = delta() {
                    self.content.push(&self.tokenizer, &text);
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let Some(text) = delta() {
                    self.reasoning.push(&self.tokenizer, &text);
                }
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                let index = event.output_index.unwrap_or(0);
                if index < MAX_TOOL_CALLS
                    && let Some(text) = delta()
                {
                    if self.tool_arguments.len() <= index {
                        self.tool_arguments
                            .resize_with(index + 1, IncrementalCounter::new);
                    }
                    self.tool_arguments[index].push(&self.tokenizer, &text);
                }
            }
            "response.output_item.added" => {
                if let Some(item) = &event.item
                    && matches!(
                        item.kind.as_deref(),
                        Some("function_call" | "custom_tool_call")
                    )
                {
                    self.called = true;
                    if let Some(name) = &item.name
                        && self.tool_names.len() + name.len() < MAX_TOOL_NAME_BYTES
                    {
                        self.tool_names.push_str(name);
                        self.tool_names.push('\n');
                    }
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.done = true;
                if let Some(response) = &event.response {
                    if let Some(usage) = response.usage.as_ref().and_then(WireUsage::normalize) {
                        self.usage = Some(usage);
                    }
                    let reason = response
                        .incomplete_details
                        .as_ref()
                        .and_then(|d| d.reason.as_deref());
                    let status = response
                        .status
                        .as_deref()
                        .unwrap_or(&event.kind["response.".len()..]);
                    self.finish_reason = responses_finish_reason(status, reason, self.called);
                }
                return EventKind::Done;
            }
            "error" => {}
            other if other.starts_with("response.") => {}
            _ => return EventKind::Unparsed,
        }
        EventKind::Delta
    }

    /// Tokens so far, cheap (for live progress).
    pub fn running(&self) -> u64 {
        let tools: usize = self
            .tool_arguments
            .iter()
            .map(IncrementalCounter::counted)
            .sum();
        (self.content.counted() + self.reasoning.counted() + tools) as u64
    }

    pub fn finish(&mut self) -> CompletionTokens {
        let tokenizer = self.tokenizer.clone();
        let tools: usize = self
            .tool_arguments
            .iter_mut()
            .map(|c| c.finish(&tokenizer))
            .sum();
        let names: usize = self
            .tool_names
            .lines()
            .map(|name| tokenizer.count(name))
            .sum();
        CompletionTokens {
            content: self.content.finish(&tokenizer) as u64,
            reasoning: self.reasoning.finish(&tokenizer) as u64,
            tool_calls: (tools + names) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn anthropic_events_are_counted_with_their_usage() {
        let tokenizer = Tokenizer::cl100k_base();
        let mut counter = CompletionCounter::messages(tokenizer.clone());
        let events: [&[u8]; 8] = [
            br#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":12,"cache_read_input_tokens":100,"cache_creation_input_tokens":40,"output_tokens":1}}}"#,
            br#"{"type":"ping"}"#,
            br#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello there"}}"#,
            br#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"Read","input":{}}}"#,
            br#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"path\":\"a\"}"}}"#,
            br#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
            br#"{"type":"message_stop"}"#,
        ];
        for event in events {
            assert_ne!(counter.on_event(event), EventKind::Unparsed);
        }
        let usage = counter.usage.unwrap();
        assert_eq!(usage.prompt, Some(152));
        assert_eq!(usage.cached, Some(100));
        assert_eq!(usage.cache_write, Some(40));
        assert_eq!(usage.completion, Some(9));
        assert_eq!(counter.finish_reason.as_deref(), Some("tool_use"));
        assert!(counter.done);
        let tokens = counter.finish();
        assert_eq!(tokens.content, tokenizer.count("Hello there") as u64);
        assert_eq!(
            tokens.tool_calls,
            (tokenizer.count("{\"path\":\"a\"}") + tokenizer.count("Read")) as u64
        );
    }

    fn count_in_chunks(tokenizer: &Tokenizer, text: &str, cuts: &[usize]) -> usize {
        let mut counter = IncrementalCounter::new();
        let mut start = 0;
        for &cut in cuts {
            let mut end = (start + cut).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            counter.push(tokenizer, &text[start..end]);
            start = end;
        }
        counter.push(tokenizer, &text[start..]);
        counter.finish(tokenizer)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn incremental_equals_whole(
            text in "([ \t\r\n]{1,6}|[a-zA-Z]{1,9}|'s|'LL|[0-9]{1,7}|[\u{4e00}-\u{4e20}]{1,4}|🎉|👨\u{200d}👩|[.,;:!?(){}\"]{1,3}|\\PC){0,120}",
            cuts in prop::collection::vec(1usize..12, 0..60),
        ) {
            for tokenizer in [Tokenizer::cl100k_base(), Tokenizer::o200k_base()] {
                prop_assert_eq!(count_in_chunks(&tokenizer, &text, &cuts), tokenizer.count(&text), "{}", tokenizer.name());
            }
        }
    }

    #[test]
    fn long_unsplittable_runs_stay_linear_and_exact() {
        let tokenizer = Tokenizer::cl100k_base();
        let text = " ".repeat(200_000) + "x" + &"a".repeat(100_000);
        let mut counter = IncrementalCounter::new();
        for chunk in text.as_bytes().chunks(3) {
            counter.push(&tokenizer, std::str::from_utf8(chunk).unwrap());
        }
        assert_eq!(counter.finish(&tokenizer), tokenizer.count(&text));
    }

    fn events_of(stream: &[u8], cut_every: usize) -> Vec<String> {
        let mut parser = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for chunk in stream.chunks(cut_every.max(1)) {
            parser.feed(chunk, |e| {
                out.push(String::from_utf8_lossy(e.data).into_owned())
            });
        }
        out
    }

    #[test]
    fn sse_line_endings_comments_and_multiline_data() {
        let stream = b": keep-alive\n\ndata: {\"a\":1}\r\n\r\ndata:x\rdata: y\r\revent: ignored\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            assert_eq!(
                events_of(stream, cut),
                ["{\"a\":1}", "x\ny", "[DONE]"],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn sse_event_end_offsets_point_past_the_blank_line() {
        let stream = b"data: a\n\ndata: b\n\n";
        let mut parser = SseParser::new(1024);
        let mut ends = Vec::new();
        parser.feed(stream, |e| ends.push(e.end));
        assert_eq!(ends, [9, 18]);
    }

    #[test]
    fn oversized_events_are_skipped_not_buffered() {
        let mut parser = SseParser::new(16);
        let mut out = Vec::new();
        let big = format!("data: {}\n\ndata: ok\n\n", "x".repeat(100));
        parser.feed(big.as_bytes(), |e| out.push(e.data.to_vec()));
        assert_eq!(out, [b"ok".to_vec()]);
        assert_eq!(parser.skipped_events, 1);
    }

    #[test]
    fn completion_counter_reads_chunks() {
        let tokenizer = Tokenizer::cl100k_base();
        let mut counter = CompletionCounter::new(tokenizer.clone());
        let events = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"Let me think"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hello "},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"world"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"Paris\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":9,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":4}}}"#,
            "[DONE]",
        ];
        let kinds: Vec<EventKind> = events
            .iter()
            .map(|e| counter.on_event(e.as_bytes()))
            .collect();
        assert_eq!(kinds[7], EventKind::UsageOnly);
        assert_eq!(kinds[8], EventKind::Done);
        let tokens = counter.finish();
        assert_eq!(tokens.content, tokenizer.count("Hello world") as u64);
        assert_eq!(tokens.reasoning, tokenizer.count("Let me think") as u64);
        assert_eq!(
            tokens.tool_calls,
            (tokenizer.count("get_weather") + tokenizer.count("{\"city\": \"Paris\"}")) as u64
        );
        let usage = counter.usage.unwrap();
        assert_eq!(
            (usage.prompt, usage.completion, usage.cached),
            (Some(10), Some(9), Some(4))
        );
        assert_eq!(counter.finish_reason.as_deref(), Some("tool_calls"));
        assert!(counter.done);
    }

    #[test]
    fn completion_counter_reads_responses_events() {
        let tokenizer = Tokenizer::cl100k_base();
        let mut counter =
            CompletionCounter::with_format(tokenizer.clone(), AnswerFormat::Responses);
        let events: [&[u8]; 8] = [
            br#"{"type":"response.created","sequence_number":0,"response":{"status":"in_progress","usage":null}}"#,
            br#"{"type":"response.reasoning_summary_text.delta","delta":"Think","output_index":0}"#,
            br#"{"type":"response.output_text.delta","delta":"Hello ","output_index":1}"#,
            br#"{"type":"response.output_text.delta","delta":"world","output_index":1}"#,
            br#"{"type":"response.output_item.added","output_index":2,"item":{"type":"function_call","name":"get_weather"}}"#,
            br#"{"type":"response.function_call_arguments.delta","delta":"{\"city\":","output_index":2}"#,
            br#"{"type":"response.function_call_arguments.delta","delta":"\"Paris\"}","output_index":2}"#,
            br#"{"type":"response.completed","response":{"status":"completed","usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":4},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":2}}}}"#,
        ];
        let kinds: Vec<EventKind> = events.iter().map(|e| counter.on_event(e)).collect();
        assert_eq!(kinds.last(), Some(&EventKind::Done));
        assert!(counter.done);
        assert_eq!(counter.understood, 8);
        assert_eq!(counter.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            counter.usage,
            Some(ReportedUsage {
                prompt: Some(12),
                completion: Some(9),
                cached: Some(4),
                reasoning: Some(2),
                cache_write: None
            })
        );
        let tokens = counter.finish();
        assert_eq!(tokens.content as usize, tokenizer.count("Hello world"));
        assert_eq!(tokens.reasoning as usize, tokenizer.count("Think"));
        assert_eq!(
            tokens.tool_calls as usize,
            tokenizer.count("{\"city\":\"Paris\"}") + tokenizer.count("get_weather")
        );
        assert_eq!(counter.on_event(b"[DONE]"), EventKind::Unparsed);
        assert_eq!(
            responses_finish_reason("incomplete", Some("max_output_tokens"), false).as_deref(),
            Some("length")
        );
    }

    #[test]
    fn garbage_events_are_ignored() {
        let mut counter = CompletionCounter::new(Tokenizer::cl100k_base());
        for data in [
            &b"not json"[..],
            b"{\"choices\": 5}",
            b"{}",
            b"\xff\xfe",
            b"[1,2]",
        ] {
            let _ = counter.on_event(data);
        }
        assert_eq!(counter.finish().total(), 0);
    }
}
