//! Anthropic Messages events → chat completion chunks (a chat client in front of an Anthropic-native provider).
//!
//! The chunk shape: openai/openai-python `src/openai/types/chat/chat_completion_chunk.py` (the role in the first
//! delta; `tool_calls` deltas with `index`, the first carrying `id`, `type` and `function.name`; the usage chunk
//! with `choices: []` when `stream_options.include_usage`; then `data: [DONE]`).

use serde_json::{Value, json};

use super::error::chat_error_value;
use super::response::{chat_id, finish_reason};
use super::{AnswerContext, MessagesUsage};

/// Translates an Anthropic Messages event stream into chat completion chunks, event by event.
///
/// Feed it each SSE event (its `event:` name, or `""` to read the name from the data's `type`, and its `data:`
/// payload) with [`push`](Self::push), and call [`finish`](Self::finish) when the upstream body ends. It writes
/// whole `data: …\n\n` SSE events to `out`.
///
/// Decisions: the first chunk (at `message_start`) carries `role: "assistant"` and `content: ""`; the
/// `finish_reason` chunk is written at `message_delta`; at `message_stop` the usage chunk (if the client asked)
/// and `[DONE]`. Thinking becomes `reasoning_content` deltas; signatures and redacted thinking are not sent. An
/// `error` event becomes a chunk `{"error":{…}}` and ends the stream; so does a body that ends before
/// `message_delta`.
#[derive(Debug)]
pub struct MessagesToChatStream {
    client_model: String,
    include_usage: bool,
    created: u64,
    id: String,
    started: bool,
    finished: bool,
    done: bool,
    usage: MessagesUsage,
    /// `(Anthropic block index, chat tool call index)` of the tool_use blocks seen.
    tools: Vec<(u64, u64)>,
}

impl MessagesToChatStream {
    /// A state machine for one answer to the request described by `ctx`.
    pub fn new(ctx: &AnswerContext) -> Self {
        Self {
            client_model: ctx.client_model.clone(),
            include_usage: ctx.include_usage,
            created: ctx.created,
            id: "chatcmpl-proxy".to_owned(),
            started: false,
            finished: false,
            done: false,
            usage: MessagesUsage::default(),
            tools: Vec::new(),
        }
    }

    /// `[DONE]` or an error was written: nothing more will be.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feeds one Anthropic SSE event: its name (`""` to take it from the data's `type`) and data.
    pub fn push(&mut self, event: &str, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let name = if event.is_empty() {
            value
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
        } else {
            event
        };
        match name {
            "message_start" => {
                let message = value.get("message").unwrap_or(&Value::Null);
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    self.id = chat_id(id);
                }
                if let Some(u) = message.get("usage") {
                    self.usage.update(u);
                }
                self.start(out);
            }
            "content_block_start" => {
                self.start(out);
                let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = value.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let chat_index = self.tools.len() as u64;
                        self.tools.push((index, chat_index));
                        let call = json!({
                            "index": chat_index,
                            "id": block.get("id").and_then(Value::as_str).unwrap_or_default(),
                            "type": "function",
                            "function": {
                                "name": block.get("name").and_then(Value::as_str).unwrap_or_default(),
                                "arguments": "",
                            },
                        });
                        self.delta(json!({"tool_calls": [call]}), out);
                    }
                    Some("text") => {
                        if let Some(t) = block
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            self.delta(json!({"content": t}), out);
                        }
                    }
                    Some("thinking") => {
                        if let Some(t) = block
                            .get("thinking")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            self.delta(json!({"reasoning_content": t}), out);
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                self.start(out);
                let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = value.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let t = delta
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        self.delta(json!({"content": t}), out);
                    }
                    Some("thinking_delta") => {
                        let t = delta
                            .get("thinking")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        self.delta(json!({"reasoning_content": t}), out);
                    }
                    Some("input_json_delta") => {
                        let Some(&(_, chat_index)) = self.tools.iter().find(|(i, _)| *i == index)
                        else {
                            return;
                        };
                        let args = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if !args.is_empty() {
                            let call =
                                json!({"index": chat_index, "function": {"arguments": args}});
                            self.delta(json!({"tool_calls": [call]}), out);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                self.start(out);
                if let Some(u) = value.get("usage") {
                    self.usage.update(u);
                }
                let stop = value.pointer("/delta/stop_reason").and_then(Value::as_str);
                if !self.finished {
                    self.finished = true;
                    self.chunk(json!({}), Some(finish_reason(stop)), out);
                }
            }
            "message_stop" => self.end(out),
            "error" => {
                let err = value.get("error").unwrap_or(&Value::Null);
                let kind = err
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("api_error");
                let message = err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error");
                write_data(out, &chat_error_value(None, kind, message));
                self.done = true;
            }
            // ping, content_block_stop, and event types this translation does not know.
            _ => {}
        }
    }

    /// The upstream body ended: writes what is still owed, or an error if the answer was cut short.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if self.finished {
            self.end(out);
            return;
        }
        self.done = true;
        let err = chat_error_value(
            None,
            "api_error",
            "the upstream event stream ended before the answer was complete",
        );
        write_data(out, &err);
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.delta(json!({"role": "assistant", "content": ""}), out);
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        if !self.finished {
            self.finished = true;
            self.chunk(json!({}), Some("stop"), out);
        }
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.client_model,
                "choices": [],
                "usage": self.usage.to_chat(),
            });
            write_data(out, &chunk);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn delta(&self, delta: Value, out: &mut Vec<u8>) {
        self.chunk(delta, None, out);
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.client_model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        write_data(out, &chunk);
    }
}

fn write_data(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(b"data: ");
    // Writing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
    out.extend_from_slice(b"\n\n");
}
