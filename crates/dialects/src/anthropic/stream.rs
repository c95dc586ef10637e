//! Chat completion chunks → Anthropic Messages events, one SSE payload at a time.
//!
//! The Anthropic stream, as the SDK reads it (anthropics/anthropic-sdk-python `src/anthropic/_streaming.py`,
//! `lib/streaming/_messages.py`, and <https://docs.claude.com/en/api/messages-streaming>): `message_start` (the
//! message with empty `content` and `stop_reason: null`), `ping`, then per content block `content_block_start`
//! (`index` counting from 0), its `content_block_delta`s (`text_delta`, `thinking_delta`, `input_json_delta` with
//! `partial_json`), `content_block_stop`; then `message_delta` (`stop_reason`, `stop_sequence`, cumulative
//! `usage`) and `message_stop`. An `error` event may come instead of the rest. Each event is written as
//! `event: NAME\ndata: JSON\n\n`.

use serde_json::{Value, json};

use super::error::{chat_error_message, chat_error_type, error_value};
use super::response::{matched_stop, message_id, reasoning_of, stop_reason};
use super::{AnswerContext, ChatUsage};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    /// A tool call, by its chat `index`.
    Tool(u64),
}

/// Translates a chat completions event stream into Anthropic's, frame by frame.
///
/// Feed it each SSE `data:` payload of the upstream answer with [`push`](Self::push) (the `[DONE]` payload too),
/// and call [`finish`](Self::finish) when the upstream body ends. What it writes to `out` are whole Anthropic
/// SSE events. It holds one open content block and a few numbers, never the answer.
///
/// Decisions:
/// - `message_start` carries `input_tokens` from [`AnswerContext::input_tokens`] (else 0); the provider's usage
///   (which chat sends at the end) goes into `message_delta`'s cumulative `usage`, which the SDK applies over it.
/// - `message_delta` and `message_stop` are written once both the `finish_reason` and the usage are known, or at
///   `[DONE]` / [`finish`](Self::finish) (the usage chunk may follow the finish chunk, with `choices: []`).
/// - Reasoning, text and tool calls each open a block when they start and close the block before; a fragment of a
///   tool call whose block was already closed (providers stream tool calls one after another) cannot be sent
///   in order and is dropped, counted by [`late_fragments`](Self::late_fragments).
/// - An upstream error object becomes an `error` event, and ends the stream. A stream cut before any
///   `finish_reason` (no `[DONE]` either) ends with an `error` event (`api_error`) rather than a made-up stop.
/// - Payloads that are not JSON are skipped.
#[derive(Debug)]
pub struct ChatToMessagesStream {
    client_model: String,
    stop_sequences: Vec<String>,
    input_tokens: u64,
    started: bool,
    done: bool,
    next_index: u64,
    open: Option<(u64, Block)>,
    /// The chat indices of the tool calls whose block was closed.
    closed_tools: Vec<u64>,
    saw_tool: bool,
    stop: Option<(&'static str, Option<String>)>,
    usage: Option<ChatUsage>,
    late_fragments: u64,
}

impl ChatToMessagesStream {
    /// A state machine for one answer to the request described by `ctx`.
    pub fn new(ctx: &AnswerContext) -> Self {
        Self {
            client_model: ctx.client_model.clone(),
            stop_sequences: ctx.stop_sequences.clone(),
            input_tokens: ctx.input_tokens.unwrap_or(0),
            started: false,
            done: false,
            next_index: 0,
            open: None,
            closed_tools: Vec::new(),
            saw_tool: false,
            stop: None,
            usage: None,
            late_fragments: 0,
        }
    }

    /// `message_stop` or an `error` event was written: nothing more will be.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Tool call argument fragments dropped because their block was already closed.
    pub fn late_fragments(&self) -> u64 {
        self.late_fragments
    }

    /// Feeds one SSE `data:` payload (a chat completion chunk, an error object, or `[DONE]`).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if data.trim_ascii() == b"[DONE]" {
            self.end(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            let message = chat_error_message(&chunk).unwrap_or_else(|| "upstream error".to_owned());
            write_event(
                out,
                "error",
                &error_value(chat_error_type(&chunk), &message),
            );
            self.done = true;
            return;
        }
        self.start(chunk.get("id").and_then(Value::as_str), out);
        if let Some(u) = chunk
            .get("usage")
            .filter(|u| !u.is_null())
            .and_then(ChatUsage::from_value)
        {
            self.usage = Some(u);
        }
        if let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) {
            if let Some(u) = choice
                .get("usage")
                .filter(|u| !u.is_null())
                .and_then(ChatUsage::from_value)
            {
                self.usage = Some(u);
            }
            self.choice(choice, out);
        }
        if self.stop.is_some() && self.usage.is_some() {
            self.end(out);
        }
    }

    /// The upstream body ended (with or without `[DONE]`): writes whatever is still owed.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if self.stop.is_some() {
            self.end(out);
            return;
        }
        self.done = true;
        let err = error_value(
            "api_error",
            "the upstream event stream ended before the answer was complete",
        );
        write_event(out, "error", &err);
    }

    fn start(&mut self, chat_id: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "type": "message_start",
            "message": {
                "id": message_id(chat_id.unwrap_or_default()),
                "type": "message",
                "role": "assistant",
                "model": self.client_model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": self.input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 0,
                },
            },
        });
        write_event(out, "message_start", &message);
        write_event(out, "ping", &json!({"type": "ping"}));
    }

    fn choice(&mut self, choice: &Value, out: &mut Vec<u8>) {
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(r) = reasoning_of(delta).filter(|r| !r.is_empty()) {
            let index = self.ensure(Block::Thinking, out);
            let d = json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": r}});
            write_event(out, "content_block_delta", &d);
        }
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let index = self.ensure(Block::Text, out);
            let d = json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}});
            write_event(out, "content_block_delta", &d);
        }
        if let Some(Value::Array(calls)) = delta.get("tool_calls") {
            for (pos, call) in calls.iter().enumerate() {
                self.tool_call(call, pos as u64, out);
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.close(out);
            let matched = matched_stop(choice, &self.stop_sequences);
            self.stop = Some(stop_reason(Some(finish), matched, self.saw_tool));
        }
    }

    fn tool_call(&mut self, call: &Value, pos: u64, out: &mut Vec<u8>) {
        let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(pos);
        let args = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let index = match self.open {
            Some((index, Block::Tool(open))) if open == chat_index => index,
            _ if self.closed_tools.contains(&chat_index) => {
                if !args.is_empty() {
                    self.late_fragments += 1;
                }
                return;
            }
            _ => {
                self.close(out);
                self.saw_tool = true;
                let index = self.next_index;
                self.next_index += 1;
                self.open = Some((index, Block::Tool(chat_index)));
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("toolu_{index}"), str::to_owned);
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let start = json!({
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}},
                });
                write_event(out, "content_block_start", &start);
                index
            }
        };
        if !args.is_empty() {
            let d = json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": args}});
            write_event(out, "content_block_delta", &d);
        }
    }

    /// The index of the open block of `kind`, opening it (and closing another) if needed.
    fn ensure(&mut self, kind: Block, out: &mut Vec<u8>) -> u64 {
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        let block = match kind {
            Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            _ => json!({"type": "text", "text": ""}),
        };
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, kind)) = self.open.take() {
            if let Block::Tool(chat_index) = kind {
                self.closed_tools.push(chat_index);
            }
            write_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    /// Closes the message: the open block, `message_delta`, `message_stop`.
    fn end(&mut self, out: &mut Vec<u8>) {
        self.start(None, out);
        self.close(out);
        let (reason, sequence) = self
            .stop
            .take()
            .unwrap_or_else(|| stop_reason(None, None, self.saw_tool));
        let usage = self.usage.unwrap_or(ChatUsage {
            prompt: self.input_tokens,
            ..ChatUsage::default()
        });
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage.to_messages(),
        });
        write_event(out, "message_delta", &delta);
        write_event(out, "message_stop", &json!({"type": "message_stop"}));
        self.done = true;
    }
}

/// Writes `event: NAME\ndata: JSON\n\n`.
pub(crate) fn write_event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}
