//! Chat completions event stream → Responses event stream, one chat `data:` payload at a time.
//!
//! Event names, fields and order as in openai-python `types/responses/response_stream_event.py` and the
//! per-event files it lists (`response_created_event.py`, `response_output_item_added_event.py`,
//! `response_content_part_added_event.py`, `response_text_delta_event.py`, `response_text_done_event.py`,
//! `response_reasoning_summary_part_added_event.py`, `response_reasoning_summary_text_delta_event.py`,
//! `response_function_call_arguments_delta_event.py`, …): every event has `type` and a `sequence_number`
//! counting from 0. Codex needs `response.created`, the `response.output_item.done` items,
//! `response.output_text.delta`, `response.reasoning_summary_text.delta` and a final `response.completed`
//! (without it the turn fails with "stream closed before response.completed"); a `response.failed` whose
//! `error.code` is `context_length_exceeded` makes it compact its history (openai/codex
//! `codex-rs/codex-api/src/sse/responses.rs`).
//!
//! Memory: the translator keeps the text (or arguments) of the items in progress, because the `.done` events
//! carry the full text; that is bounded by the answer itself. Finished items are kept for the `output` of
//! `response.completed` (as the API sends it) unless [`AnswerContext::full_output_in_completed`] is false.

use serde_json::{Map, Value, json};

use super::answer::{
    function_call_item, item_id, message_item, output_text_part, reasoning_item, response_error,
    response_object, status_for, usage_from_chat,
};
use super::request::AnswerContext;
use super::usage::{ResponsesUsage, read_usage};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextKind {
    Reasoning,
    Message,
}

#[derive(Debug)]
struct TextItem {
    kind: TextKind,
    id: String,
    output_index: usize,
    text: String,
}

#[derive(Debug)]
struct CallItem {
    chat_index: u64,
    id: String,
    output_index: usize,
    call_id: String,
    name: String,
    arguments: String,
}

/// The state machine: feed it every chat SSE `data:` payload with [`push`](Self::push) (`[DONE]` included),
/// then call [`finish`](Self::finish) when the upstream body ends; it appends Responses SSE bytes
/// (`event: TYPE\ndata: JSON\n\n`) to `out`.
#[derive(Debug)]
pub struct StreamTranslator {
    ctx: AnswerContext,
    seq: u64,
    started: bool,
    terminal: Option<Value>,
    items: usize,
    text: Option<TextItem>,
    calls: Vec<CallItem>,
    output: Vec<Value>,
    usage: Option<Value>,
    finish_reason: Option<String>,
}

impl StreamTranslator {
    /// A translator for the answer to the request that produced `ctx`.
    pub fn new(ctx: AnswerContext) -> Self {
        Self {
            ctx,
            seq: 0,
            started: false,
            terminal: None,
            items: 0,
            text: None,
            calls: Vec::new(),
            output: Vec::new(),
            usage: None,
            finish_reason: None,
        }
    }

    /// True once a terminal event (`response.completed`, `.incomplete` or `.failed`) was written; further
    /// input is ignored.
    pub fn is_finished(&self) -> bool {
        self.terminal.is_some()
    }

    /// The final Response object (as in the terminal event), once finished: what to give
    /// [`items_to_store`](super::items_to_store).
    pub fn final_response(&self) -> Option<&Value> {
        self.terminal.as_ref()
    }

    /// The usage reported so far (the chat stream's usage chunk comes last), for accounting.
    pub fn usage(&self) -> Option<ResponsesUsage> {
        self.usage.as_ref().and_then(read_usage)
    }

    /// Writes `response.created` and `response.in_progress` if not yet written. [`push`](Self::push) does it
    /// on the first payload; call it to send the client something before the upstream's first byte.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let snapshot = response_object(&self.ctx, "in_progress", Vec::new(), None, None, None);
        self.emit(out, "response.created", json!({"response": snapshot}));
        let snapshot = response_object(&self.ctx, "in_progress", Vec::new(), None, None, None);
        self.emit(out, "response.in_progress", json!({"response": snapshot}));
    }

    /// Translates one chat SSE `data:` payload (without the `data: ` prefix; surrounding whitespace is
    /// ignored). `[DONE]` ends the response with `response.completed` (or `response.incomplete` after a
    /// `length` / `content_filter` finish). An error object from the upstream ends it with `response.failed`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.terminal.is_some() {
            return;
        }
        self.start(out);
        let data = data.trim_ascii();
        if data.is_empty() {
            return;
        }
        if data == b"[DONE]" {
            self.complete(out);
            return;
        }
        let chunk: Value = match serde_json::from_slice(data) {
            Ok(chunk) => chunk,
            Err(_) => {
                let error = json!({"code": "server_error", "message": "The upstream sent an invalid stream event."});
                self.fail(out, error);
                return;
            }
        };
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let error = response_error(error);
            self.fail(out, error);
            return;
        }
        // Usage: top-level in the final chunk (OpenAI, with `choices: []`), or inside the choice (Moonshot).
        if let Some(usage) = chunk
            .get("usage")
            .filter(|u| u.is_object())
            .or_else(|| chunk.pointer("/choices/0/usage").filter(|u| u.is_object()))
        {
            self.usage = Some(usage_from_chat(usage));
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        if let Some(delta) = choice.get("delta") {
            let reasoning = delta
                .get("reasoning_content")
                .or_else(|| delta.get("reasoning"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !reasoning.is_empty() {
                self.text_delta(out, TextKind::Reasoning, reasoning);
            }
            for key in ["content", "refusal"] {
                let text = delta.get(key).and_then(Value::as_str).unwrap_or_default();
                if !text.is_empty() {
                    self.text_delta(out, TextKind::Message, text);
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for (position, call) in calls.iter().enumerate() {
                    self.call_delta(out, position, call);
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
        }
    }

    /// The upstream body ended. After `[DONE]` this does nothing. Without `[DONE]` but after a
    /// `finish_reason`, the response completes normally (some providers omit `[DONE]`); otherwise the answer
    /// was cut and the client gets `response.failed` (`server_error`), which Codex retries.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.terminal.is_some() {
            return;
        }
        self.start(out);
        if self.finish_reason.is_some() {
            self.complete(out);
        } else {
            let error = json!({
                "code": "server_error",
                "message": "The upstream stream ended before the response was complete.",
            });
            self.fail(out, error);
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, fields: Value) {
        let mut event = Map::new();
        event.insert("type".into(), Value::String(kind.into()));
        event.insert("sequence_number".into(), Value::from(self.seq));
        if let Value::Object(fields) = fields {
            event.extend(fields);
        }
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        if serde_json::to_writer(&mut *out, &Value::Object(event)).is_err() {
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"\n\n");
    }

    fn next_item(&mut self, prefix: &str) -> (String, usize) {
        let n = self.items;
        self.items += 1;
        (item_id(&self.ctx, prefix, n), n)
    }

    fn text_delta(&mut self, out: &mut Vec<u8>, kind: TextKind, delta: &str) {
        self.close_calls(out, "completed");
        if self.text.as_ref().is_some_and(|t| t.kind != kind) {
            self.close_text(out, "completed");
        }
        if self.text.is_none() {
            self.open_text(out, kind);
        }
        let Some(item) = self.text.as_mut() else {
            return;
        };
        item.text.push_str(delta);
        let (id, output_index) = (item.id.clone(), item.output_index);
        match kind {
            TextKind::Reasoning => self.emit(
                out,
                "response.reasoning_summary_text.delta",
                json!({"item_id": id, "output_index": output_index, "summary_index": 0, "delta": delta}),
            ),
            TextKind::Message => self.emit(
                out,
                "response.output_text.delta",
                json!({
                    "item_id": id, "output_index": output_index, "content_index": 0,
                    "delta": delta, "logprobs": [],
                }),
            ),
        }
    }

    fn open_text(&mut self, out: &mut Vec<u8>, kind: TextKind) {
        let prefix = match kind {
            TextKind::Reasoning => "rs",
            TextKind::Message => "msg",
        };
        let (id, output_index) = self.next_item(prefix);
        match kind {
            TextKind::Reasoning => {
                let item = json!({"id": id, "type": "reasoning", "summary": []});
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": item}),
                );
                self.emit(
                    out,
                    "response.reasoning_summary_part.added",
                    json!({
                        "item_id": id, "output_index": output_index, "summary_index": 0,
                        "part": {"type": "summary_text", "text": ""},
                    }),
                );
            }
            TextKind::Message => {
                let item = message_item(&id, "in_progress", None);
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": item}),
                );
                self.emit(
                    out,
                    "response.content_part.added",
                    json!({
                        "item_id": id, "output_index": output_index, "content_index": 0,
                        "part": output_text_part(""),
                    }),
                );
            }
        }
        self.text = Some(TextItem {
            kind,
            id,
            output_index,
            text: String::new(),
        });
    }

    fn close_text(&mut self, out: &mut Vec<u8>, status: &str) {
        let Some(TextItem {
            kind,
            id,
            output_index,
            text,
        }) = self.text.take()
        else {
            return;
        };
        let item = match kind {
            TextKind::Reasoning => {
                self.emit(
                    out,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": output_index, "summary_index": 0, "text": text}),
                );
                self.emit(
                    out,
                    "response.reasoning_summary_part.done",
                    json!({
                        "item_id": id, "output_index": output_index, "summary_index": 0,
                        "part": {"type": "summary_text", "text": text},
                    }),
                );
                reasoning_item(&id, &text)
            }
            TextKind::Message => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({
                        "item_id": id, "output_index": output_index, "content_index": 0,
                        "text": text, "logprobs": [],
                    }),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({
                        "item_id": id, "output_index": output_index, "content_index": 0,
                        "part": output_text_part(&text),
                    }),
                );
                message_item(&id, status, Some(&text))
            }
        };
        self.item_done(out, output_index, item);
    }

    fn item_done(&mut self, out: &mut Vec<u8>, output_index: usize, item: Value) {
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        );
        if self.ctx.full_output_in_completed {
            self.output.push(item);
        }
    }

    fn call_delta(&mut self, out: &mut Vec<u8>, position: usize, call: &Value) {
        let chat_index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let slot = match self.calls.iter().position(|c| c.chat_index == chat_index) {
            Some(slot) => {
                // A provider that streams the name in pieces sends them before the arguments.
                if let Some(c) = self.calls.get_mut(slot)
                    && c.arguments.is_empty()
                    && !name.is_empty()
                    && c.name != name
                {
                    c.name.push_str(name);
                }
                slot
            }
            None => {
                self.close_text(out, "completed");
                let (id, output_index) = self.next_item("fc");
                let call_id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map_or_else(|| item_id(&self.ctx, "call", output_index), str::to_owned);
                let tool = self.ctx.tool_names.client(name);
                let item = function_call_item(&id, "in_progress", &call_id, &tool, "");
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": item}),
                );
                self.calls.push(CallItem {
                    chat_index,
                    id,
                    output_index,
                    call_id,
                    name: name.to_owned(),
                    arguments: String::new(),
                });
                self.calls.len() - 1
            }
        };
        if arguments.is_empty() {
            return;
        }
        let Some(c) = self.calls.get_mut(slot) else {
            return;
        };
        c.arguments.push_str(arguments);
        let (id, output_index) = (c.id.clone(), c.output_index);
        self.emit(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": output_index, "delta": arguments}),
        );
    }

    fn close_calls(&mut self, out: &mut Vec<u8>, status: &str) {
        for call in std::mem::take(&mut self.calls) {
            let tool = self.ctx.tool_names.client(&call.name);
            self.emit(
                out,
                "response.function_call_arguments.done",
                json!({
                    "item_id": call.id, "output_index": call.output_index,
                    "name": tool.name, "arguments": call.arguments,
                }),
            );
            let item = function_call_item(&call.id, status, &call.call_id, &tool, &call.arguments);
            self.item_done(out, call.output_index, item);
        }
    }

    fn close_all(&mut self, out: &mut Vec<u8>, status: &str) {
        self.close_text(out, status);
        self.close_calls(out, status);
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        let (status, incomplete) = status_for(self.finish_reason.as_deref());
        self.close_all(out, status);
        let response = response_object(
            &self.ctx,
            status,
            std::mem::take(&mut self.output),
            self.usage.clone(),
            None,
            incomplete,
        );
        let kind = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, kind, json!({"response": response.clone()}));
        self.terminal = Some(response);
    }

    fn fail(&mut self, out: &mut Vec<u8>, error: Value) {
        self.close_all(out, "incomplete");
        let response = response_object(
            &self.ctx,
            "failed",
            std::mem::take(&mut self.output),
            self.usage.clone(),
            Some(error),
            None,
        );
        self.emit(
            out,
            "response.failed",
            json!({"response": response.clone()}),
        );
        self.terminal = Some(response);
    }
}
