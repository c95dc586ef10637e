//! Observation masking: tool results older than the last N tool turns become a one-line placeholder naming the
//! tool and the size. Messages are never added, removed or reordered, and `tool_call_id` stays, so every
//! `tool_calls[].id` keeps its result.

use super::conversation::{
    Conversation, Counter, MARKER, Rewrite, Role, Slot, tool_names, tool_of, with_content,
};
use crate::config::context::ObservationConfig;

/// Marks old tool results in `slots` (only where a slot is still `Keep`); returns how many.
pub fn plan(
    conversation: &Conversation,
    config: &ObservationConfig,
    counter: &Counter<'_>,
    slots: &mut [Slot],
) -> usize {
    let body: &[u8] = &conversation.body;
    let messages = &conversation.messages;
    // A tool turn is an assistant message with tool calls; a result belongs to the last turn before it.
    let turns = messages
        .iter()
        .filter(|m| m.role == Role::Assistant && !m.calls().is_empty())
        .count();
    let oldest_kept = turns.saturating_sub(config.keep_last_tool_turns) + 1;
    if oldest_kept <= 1 && config.keep_last_tool_turns > 0 {
        return 0;
    }
    let names = tool_names(messages);
    let mut turn = 0;
    let mut observed = 0;
    for (index, message) in messages.iter().enumerate() {
        if message.role == Role::Assistant && !message.calls().is_empty() {
            turn += 1;
            continue;
        }
        if message.role != Role::Tool
            || turn >= oldest_kept
            || !matches!(slots.get(index), Some(Slot::Keep))
            || message.is_placeholder()
        {
            continue;
        }
        if message.content.is_none() || (config.keep_errors && message.facts.error_like) {
            continue;
        }
        let tool = tool_of(message, &names).unwrap_or("unknown");
        let rewrite = match message.facts.observed.get() {
            Some((made_for, rewrite)) if **made_for == *tool => rewrite.clone(),
            _ => {
                let text = format!(
                    "{MARKER}: earlier result of tool `{tool}` omitted ({} tokens); call the tool again if it is needed]",
                    message.tokens
                );
                let Some(bytes) = with_content(body, message, &text) else {
                    continue;
                };
                let tokens = counter.message(&bytes);
                let rewrite = Rewrite { bytes, tokens };
                // Same bytes, same tool: the next turn reuses it.
                let _ = message.facts.observed.set((tool.into(), rewrite.clone()));
                rewrite
            }
        };
        if rewrite.tokens < message.tokens {
            slots[index] = Slot::Rewrite(rewrite);
            observed += 1;
        }
    }
    observed
}

/// Signs of a failed call near the start or the end of a result (lower-cased JSON text).
const ERROR_SIGNS: &[&str] = &[
    "traceback (most recent call last)",
    "exception",
    "error:",
    "error[",
    "error\\\":",
    "panicked at",
    "fatal:",
    "connection refused",
    "timed out",
    "command not found",
    "no such file or directory",
    "permission denied",
    "status\\\":\\\"error",
];

/// Whether a result (raw JSON content) looks like an error: only its first and last 2 KiB are read.
pub fn looks_like_error(raw: &[u8]) -> bool {
    const WINDOW: usize = 2048;
    let head = &raw[..raw.len().min(WINDOW)];
    let tail = &raw[raw.len().saturating_sub(WINDOW)..];
    let check = |part: &[u8]| {
        let text = String::from_utf8_lossy(part).to_ascii_lowercase();
        let trimmed = text.trim_start_matches(['"', ' ', '[', '{']);
        trimmed.starts_with("error") || ERROR_SIGNS.iter().any(|s| text.contains(s))
    };
    check(head) || (raw.len() > WINDOW && check(tail))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::context::conversation::render;
    use crate::proxy::request::inspect;
    use crate::tokens::Tokenizer;
    use crate::tokens::cache::MessageCache;
    use bytes::Bytes;
    use serde_json::{Value, json};

    fn turn(i: usize, output: &str) -> Vec<Value> {
        vec![
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("c{i}"), "type": "function", "function": {"name": format!("tool{i}"), "arguments": "{}"}}]}),
            json!({"role": "tool", "tool_call_id": format!("c{i}"), "content": output}),
        ]
    }

    #[test]
    fn old_results_go_errors_and_recent_ones_stay() {
        let bulky = "some file content line\n".repeat(30);
        let mut messages = vec![json!({"role": "user", "content": "go"})];
        messages.extend(turn(1, &bulky));
        messages.extend(turn(2, "Error: file not found\n"));
        messages.extend(turn(3, &bulky));
        messages.extend(turn(4, &bulky));
        let body = serde_json::to_vec(&json!({"model": "m", "messages": messages})).unwrap();
        let view = inspect(&body).unwrap();
        let cache = MessageCache::new(1 << 20);
        let tokenizer = Tokenizer::cl100k_base();
        let counter = Counter {
            tokenizer: &tokenizer,
            cache: &cache,
        };
        let conv = Conversation::read(Bytes::from(body.clone()), &view.layout, &counter);
        let mut slots = vec![Slot::Keep; conv.messages.len()];
        let config = ObservationConfig {
            enabled: true,
            keep_last_tool_turns: 1,
            keep_errors: true,
        };
        // Turns 1 and 3 go; 2 is an error; 4 is the last turn.
        assert_eq!(plan(&conv, &config, &counter, &mut slots), 2);
        let out: Value = serde_json::from_slice(&render(&conv, &slots).unwrap().0).unwrap();
        let contents: Vec<&str> = out["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or(""))
            .collect();
        assert!(contents[2].contains("tool `tool1`"), "{}", contents[2]);
        assert!(contents[4].starts_with("Error"));
        assert!(contents[6].contains("tool `tool3`"));
        assert_eq!(contents[8], bulky);
        // Nothing to do while there are no more turns than kept.
        let mut slots = vec![Slot::Keep; conv.messages.len()];
        let keep_all = ObservationConfig {
            keep_last_tool_turns: 8,
            ..config
        };
        assert_eq!(plan(&conv, &keep_all, &counter, &mut slots), 0);
    }

    #[test]
    fn error_signs() {
        assert!(looks_like_error(
            br#""Traceback (most recent call last):\n  File""#
        ));
        assert!(looks_like_error(br#""error: could not compile""#));
        assert!(looks_like_error(br#""{\"error\": \"denied\"}""#));
        assert!(!looks_like_error(br#""all 12 tests passed""#));
    }
}
