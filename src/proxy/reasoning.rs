//! Kimi's thinking round trip. Kimi K2 thinking models (K2.5, K2.6, kimi-for-coding with thinking) and
//! DeepSeek's reasoner refuse a follow-up whose assistant tool-call message lacks the reasoning it came with
//! ("thinking is enabled but reasoning_content is missing in assistant tool call message"; K2.6 also refuses
//! an empty string). Moonshot's guide says to keep `reasoning_content` in the context
//! (platform.moonshot.ai/docs/guide/use-kimi-k2-thinking-model). Continue, Cline and many apps drop it
//! (continue #11527 #11711, cline-adjacent reports, cc-switch #3219).
//!
//! The proxy saw that reasoning go past: for a model marked `reasoning_echo`, [`ReasoningCapture`] remembers the
//! reasoning of each answer that made tool calls, keyed by its tool-call ids, in a bounded [`ReasoningMemory`];
//! on the way upstream, [`ReasoningMemory::restore`] puts it back into an assistant message that carries none.
//! A message that carries its reasoning is never touched.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::accounting::tracker::AnswerObserver;

/// Memory for remembered reasoning (text bytes; ids included).
const MEMORY_BYTES: u64 = 32 * 1024 * 1024;
/// A conversation idle longer than this is not expected to come back for its reasoning.
const REMEMBER_FOR: Duration = Duration::from_secs(6 * 3600);
/// Longest reasoning remembered for one answer; a longer one is not remembered at all (better none than cut).
const MAX_REASONING_BYTES: usize = 1024 * 1024;

/// Reasoning by tool-call id, bounded in bytes and time.
pub struct ReasoningMemory {
    by_call: moka::sync::Cache<String, Arc<str>>,
}

impl Default for ReasoningMemory {
    fn default() -> Self {
        Self::new(MEMORY_BYTES)
    }
}

impl ReasoningMemory {
    pub fn new(max_bytes: u64) -> ReasoningMemory {
        ReasoningMemory {
            by_call: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                // An answer's reasoning is shared by its calls but charged to each: the bound errs on the
                // safe side.
                .weigher(|id: &String, reasoning: &Arc<str>| {
                    u32::try_from(id.len() + reasoning.len() + 64).unwrap_or(u32::MAX)
                })
                .time_to_idle(REMEMBER_FOR)
                .build(),
        }
    }

    /// Remembers `reasoning` for each of `call_ids`.
    pub fn remember(&self, call_ids: &[String], reasoning: &str) {
        let shared: Arc<str> = Arc::from(reasoning);
        for id in call_ids {
            self.by_call.insert(id.clone(), Arc::clone(&shared));
        }
    }

    pub fn recall(&self, call_id: &str) -> Option<Arc<str>> {
        self.by_call.get(call_id)
    }

    /// Puts the remembered reasoning into every assistant message of a chat request that has tool calls and
    /// no reasoning (absent, null or empty). Returns how many messages were mended.
    pub fn restore(&self, request: &mut Value) -> u32 {
        let Some(messages) = request.get_mut("messages").and_then(Value::as_array_mut) else {
            return 0;
        };
        let mut restored = 0;
        for message in messages.iter_mut() {
            let Some(object) = message.as_object_mut() else {
                continue;
            };
            if object.get("role").and_then(Value::as_str) != Some("assistant") {
                continue;
            }
            let carried = match object.get("reasoning_content") {
                None | Some(Value::Null) => false,
                Some(Value::String(text)) => !text.is_empty(),
                Some(_) => true,
            };
            if carried {
                continue;
            }
            let found = object
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|call| call.get("id").and_then(Value::as_str))
                .find_map(|id| self.recall(id));
            if let Some(reasoning) = found {
                object.insert(
                    "reasoning_content".to_string(),
                    Value::String(reasoning.to_string()),
                );
                restored += 1;
            }
        }
        restored
    }
}

/// Follows one answer of a `reasoning_echo` model and, when it ends complete with tool calls, remembers its
/// reasoning under their ids.
pub struct ReasoningCapture {
    memory: Arc<ReasoningMemory>,
    reasoning: String,
    call_ids: Vec<String>,
    too_long: bool,
}

impl ReasoningCapture {
    pub fn new(memory: Arc<ReasoningMemory>) -> ReasoningCapture {
        ReasoningCapture {
            memory,
            reasoning: String::new(),
            call_ids: Vec::new(),
            too_long: false,
        }
    }

    fn add_reasoning(&mut self, text: &str) {
        if self.reasoning.len() + text.len() > MAX_REASONING_BYTES {
            self.too_long = true;
            self.reasoning = String::new();
        }
        if !self.too_long {
            self.reasoning.push_str(text);
        }
    }
}

/// The parts of a streamed chunk or a whole answer that matter here (both shapes: `delta` or `message`).
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    choices: Vec<AnswerChoice<'a>>,
}

#[derive(Deserialize)]
struct AnswerChoice<'a> {
    #[serde(borrow, default, alias = "message")]
    delta: Option<AnswerMessage<'a>>,
}

#[derive(Deserialize)]
struct AnswerMessage<'a> {
    /// Kimi and DeepSeek name it `reasoning_content`; OpenRouter and some gateways `reasoning`.
    #[serde(borrow, default, alias = "reasoning")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<AnswerCall<'a>>>,
}

#[derive(Deserialize)]
struct AnswerCall<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

impl ReasoningCapture {
    fn read(&mut self, bytes: &[u8]) {
        let Ok(answer) = serde_json::from_slice::<Answer<'_>>(bytes) else {
            return;
        };
        // Only the first choice: a follow-up continues one of them, and clients send back the first.
        let Some(message) = answer.choices.into_iter().next().and_then(|c| c.delta) else {
            return;
        };
        if let Some(text) = &message.reasoning_content {
            self.add_reasoning(text);
        }
        for call in message.tool_calls.into_iter().flatten() {
            if let Some(id) = call.id.filter(|id| !id.is_empty())
                && !self.call_ids.iter().any(|known| *known == id)
            {
                self.call_ids.push(id.into_owned());
            }
        }
    }
}

impl AnswerObserver for ReasoningCapture {
    fn on_event(&mut self, data: &[u8]) {
        if data.first() == Some(&b'{') {
            self.read(data);
        }
    }

    fn on_json(&mut self, body: &[u8]) {
        self.read(body);
    }

    fn finish(&mut self, complete: bool) {
        if complete && !self.too_long && !self.reasoning.is_empty() && !self.call_ids.is_empty() {
            self.memory.remember(&self.call_ids, &self.reasoning);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn captured(events: &[&str]) -> Arc<ReasoningMemory> {
        let memory = Arc::new(ReasoningMemory::default());
        let mut capture = ReasoningCapture::new(Arc::clone(&memory));
        for event in events {
            capture.on_event(event.as_bytes());
        }
        capture.finish(true);
        memory
    }

    #[test]
    fn a_streamed_answer_with_tool_calls_is_remembered_by_call_id() {
        let memory = captured(&[
            r#"{"choices":[{"delta":{"reasoning_content":"I should "}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"read the file."}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"read"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
            "[DONE]",
        ]);
        assert_eq!(
            memory.recall("call_1").as_deref(),
            Some("I should read the file.")
        );
    }

    #[test]
    fn an_answer_without_tool_calls_or_cut_short_is_not_remembered() {
        let memory = captured(&[r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#]);
        memory.by_call.run_pending_tasks();
        assert_eq!(memory.by_call.entry_count(), 0);
        let memory = Arc::new(ReasoningMemory::default());
        let mut capture = ReasoningCapture::new(Arc::clone(&memory));
        capture.on_json(
            br#"{"choices":[{"message":{"reasoning_content":"r","tool_calls":[{"id":"c9"}]}}]}"#,
        );
        capture.finish(false);
        assert!(memory.recall("c9").is_none());
    }

    #[test]
    fn restores_only_messages_that_lack_their_reasoning() {
        let memory = ReasoningMemory::default();
        memory.remember(&["a".to_string()], "thought A");
        memory.remember(&["b".to_string()], "thought B");
        let mut request = json!({"messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "a"}]},
            {"role": "tool", "tool_call_id": "a", "content": "ok"},
            {"role": "assistant", "content": "", "reasoning_content": "", "tool_calls": [{"id": "b"}]},
            {"role": "assistant", "content": "", "reasoning_content": "mine", "tool_calls": [{"id": "b"}]},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "unknown"}]},
        ]});
        assert_eq!(memory.restore(&mut request), 2);
        let messages = request["messages"].as_array().unwrap();
        assert_eq!(messages[1]["reasoning_content"], "thought A");
        assert_eq!(messages[3]["reasoning_content"], "thought B");
        assert_eq!(messages[4]["reasoning_content"], "mine");
        assert!(messages[5].get("reasoning_content").is_none());
    }
}
