//! Compaction: when a request fills too much of the model's context window, the system messages and the last
//! N exchanges are kept and the middle is replaced by one summary message.
//!
//! The client keeps sending its whole history, so a conversation's compaction is remembered: later requests
//! that start with the same messages get the same summary (same bytes, so provider prompt caches still hit)
//! until the request is over the threshold again; then, cooldown and the consecutive limit permitting, a
//! larger span is compacted, its summary built from the previous one plus the messages newly covered.
//!
//! An exchange starts at each user message and at each assistant message that follows a tool result (an agent
//! step), so a cut never falls between an assistant's `tool_calls` and their results; the cut is also moved
//! back if any kept result answers a call that would be dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use super::conversation::{Conversation, MARKER, Message, Role, Slot, tool_names, tool_of};
use crate::config::context::CompactionConfig;

/// A conversation's last compaction.
#[derive(Debug, Clone)]
pub struct State {
    /// The messages `start..end` (system messages among them excepted) are replaced.
    pub start: usize,
    pub end: usize,
    /// Identifies the messages `start..end`: the compaction applies again only to the same messages.
    pub fingerprint: u64,
    /// The summary without its header line.
    pub digest: Arc<str>,
    /// Messages replaced and their tokens in the original.
    pub replaced: usize,
    pub replaced_tokens: u64,
    pub at: Instant,
    /// New compactions in a row that left the request above the threshold.
    pub consecutive: u32,
    /// `extractive` or the summary model.
    pub kind: Arc<str>,
}

impl State {
    /// The summary message's content.
    pub fn text(&self) -> String {
        summary_text(self.replaced, self.replaced_tokens, &self.digest)
    }
}

pub fn summary_text(replaced: usize, tokens: u64, digest: &str) -> String {
    format!(
        "{MARKER} compacted {replaced} earlier messages ({tokens} tokens) into this summary]\n{digest}"
    )
}

/// The summary as a message.
pub fn summary_message(text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"role": "system", "content": text})).unwrap_or_default()
}

/// The summary as an Anthropic Messages turn: a `user` turn with one text block (Messages has no `system`
/// role inside `messages` outside a beta). A kept `user` turn may follow it: "Consecutive user or assistant
/// turns in your request will be combined into a single turn" (<https://docs.anthropic.com/en/api/messages>,
/// the `messages` parameter).
pub fn summary_turn(text: &str) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"role": "user", "content": [{"type": "text", "text": text}]}),
    )
    .unwrap_or_default()
}

/// What to do for one request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Below the threshold with nothing to reuse.
    Nothing,
    /// The remembered compaction applies as it is.
    Reuse(Arc<State>),
    /// Compact `start..end` anew (`previous` is covered by it).
    New {
        start: usize,
        end: usize,
        previous: Option<Arc<State>>,
    },
    /// Over the threshold, but compaction is held back (the reason); `reuse` still applies if any.
    Held {
        reason: &'static str,
        reuse: Option<Arc<State>>,
    },
}

/// Where each exchange starts.
pub fn exchange_starts(messages: &[Message]) -> Vec<usize> {
    let mut starts = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let previous = i
            .checked_sub(1)
            .and_then(|p| messages.get(p))
            .map(|p| p.role);
        let starts_here = match m.role {
            Role::User => true,
            Role::Assistant => previous == Some(Role::Tool),
            _ => false,
        };
        if starts_here {
            starts.push(i);
        }
    }
    starts
}

/// The number of leading system messages.
pub fn head_end(messages: &[Message]) -> usize {
    messages
        .iter()
        .position(|m| m.role != Role::System)
        .unwrap_or(messages.len())
}

/// The first kept message when the last `keep` exchanges stay: never inside a tool-call group. `None` when
/// fewer than two messages would be replaced.
pub fn choose_end(messages: &[Message], start: usize, keep: usize) -> Option<usize> {
    let starts = exchange_starts(messages);
    let mut end = if keep == 0 {
        messages.len()
    } else {
        *starts.get(starts.len().checked_sub(keep)?)?
    };
    // Move the cut back while a kept tool result answers a call made before it.
    loop {
        let callers: HashMap<&str, usize> = messages[..end]
            .iter()
            .enumerate()
            .flat_map(|(i, m)| m.calls().iter().map(move |(id, _)| (id.as_str(), i)))
            .collect();
        let orphan = messages[end..]
            .iter()
            .filter(|m| m.role == Role::Tool)
            .filter_map(|m| m.tool_call_id())
            .filter_map(|id| callers.get(id).copied())
            .min();
        match orphan {
            Some(caller) if caller < end => end = caller,
            _ => break,
        }
    }
    // A tool result right at the cut would lose its call.
    while end > start && messages.get(end).is_some_and(|m| m.role == Role::Tool) {
        end -= 1;
    }
    let replaced = messages[start.min(end)..end]
        .iter()
        .filter(|m| m.role != Role::System)
        .count();
    (end > start && replaced >= 2).then_some(end)
}

pub fn fingerprint(messages: &[Message], start: usize, end: usize) -> u64 {
    let mut bytes = Vec::with_capacity((end - start) * 8);
    for m in messages.get(start..end).unwrap_or_default() {
        bytes.extend_from_slice(&m.hash.to_le_bytes());
    }
    xxh3_64(&bytes)
}

/// Inputs of [`decide`].
pub struct Occupancy {
    /// The request's prompt tokens as it would be sent now (after masking and observation).
    pub tokens: u64,
    pub window: u64,
    /// Current tokens of each message (after masking and observation).
    pub per_message: Vec<u64>,
}

impl Occupancy {
    fn ratio(&self, tokens: u64) -> f64 {
        if self.window == 0 {
            0.0
        } else {
            tokens as f64 / self.window as f64
        }
    }

    /// Tokens once `start..end` (system messages excepted) is replaced by `summary_tokens`.
    pub fn after(
        &self,
        messages: &[Message],
        start: usize,
        end: usize,
        summary_tokens: u64,
    ) -> u64 {
        let dropped: u64 = (start..end)
            .filter(|&i| messages.get(i).is_some_and(|m| m.role != Role::System))
            .filter_map(|i| self.per_message.get(i))
            .sum();
        self.tokens.saturating_sub(dropped) + summary_tokens
    }
}

/// Decides what compaction does for this request. `force`: a manual compaction was asked for.
pub fn decide(
    messages: &[Message],
    occupancy: &Occupancy,
    config: &CompactionConfig,
    state: Option<Arc<State>>,
    force: bool,
    summary_tokens: impl Fn(&State) -> u64,
    now: Instant,
) -> Decision {
    let start = head_end(messages);
    let reusable = state.filter(|s| {
        s.start == start
            && s.end <= messages.len()
            && fingerprint(messages, s.start, s.end) == s.fingerprint
    });
    let tokens = match &reusable {
        Some(s) => occupancy.after(messages, s.start, s.end, summary_tokens(s)),
        None => occupancy.tokens,
    };
    if !force && occupancy.ratio(tokens) < config.threshold {
        return match reusable {
            Some(s) => Decision::Reuse(s),
            None => Decision::Nothing,
        };
    }
    if let Some(s) = &reusable
        && !force
    {
        if now.duration_since(s.at) < config.cooldown {
            return Decision::Held {
                reason: "cooldown",
                reuse: reusable,
            };
        }
        if s.consecutive >= config.max_consecutive {
            return Decision::Held {
                reason: "consecutive limit",
                reuse: reusable,
            };
        }
    }
    match choose_end(messages, start, config.keep_last_exchanges) {
        Some(end) if reusable.as_ref().is_none_or(|s| end > s.end) => Decision::New {
            start,
            end,
            previous: reusable,
        },
        _ => Decision::Held {
            reason: "nothing more to compact",
            reuse: reusable,
        },
    }
}

/// Replaces `start..end` in `slots` (system messages stay) by `summary`; returns how many were dropped.
pub fn apply(
    slots: &mut [Slot],
    messages: &[Message],
    start: usize,
    end: usize,
    summary: Vec<u8>,
) -> usize {
    let mut dropped = 0;
    for i in start..end.min(slots.len()) {
        if messages.get(i).is_some_and(|m| m.role != Role::System) {
            slots[i] = Slot::Drop;
            dropped += 1;
        }
    }
    if let Some(first) = slots.get_mut(start) {
        let then = std::mem::replace(first, Slot::Keep);
        *first = Slot::Insert {
            message: summary,
            then: Box::new(then),
        };
    }
    dropped
}

/// Characters per token assumed when budgeting a summary (conservative for English and code).
const CHARS_PER_TOKEN: u64 = 3;
const TASK_CHARS: usize = 1500;
const LINE_CHARS: usize = 200;

/// A deterministic digest of `from..end` (the messages a previous compaction did not cover), appended to the
/// previous digest; at most `max_tokens` (approximately), keeping the task and the most recent lines.
pub fn extractive(
    conversation: &Conversation,
    from: usize,
    end: usize,
    previous: Option<&str>,
    max_tokens: u64,
) -> String {
    let body: &[u8] = &conversation.body;
    let messages = &conversation.messages;
    let names = tool_names(messages);
    let first_user = messages.iter().position(|m| m.role == Role::User);
    let mut lines: Vec<String> = previous
        .map(|p| p.lines().map(str::to_string).collect())
        .unwrap_or_default();
    for (i, m) in messages.iter().enumerate().take(end).skip(from) {
        let raw = m.raw_content(body).unwrap_or_default();
        match m.role {
            Role::System => {}
            Role::User if Some(i) == first_user => {
                lines.push(format!("Task: {}", one_line(&text_prefix(raw, TASK_CHARS))));
            }
            Role::User => lines.push(format!(
                "- user: {}",
                one_line(&text_prefix(raw, LINE_CHARS))
            )),
            Role::Assistant => {
                let text = one_line(&text_prefix(raw, LINE_CHARS));
                if !text.is_empty() {
                    lines.push(format!("- assistant: {text}"));
                }
                for call in assistant_calls(body.get(m.range.clone()).unwrap_or_default()) {
                    lines.push(format!("- assistant called {call}"));
                }
            }
            Role::Tool => {
                let tool = tool_of(m, &names).unwrap_or("tool");
                let text = text_prefix(raw, 600);
                let first = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("");
                let first: String = first.chars().take(150).collect();
                let verb = if m.facts.error_like {
                    "failed"
                } else {
                    "returned"
                };
                lines.push(format!("- {tool} {verb} {} tokens: {first}", m.tokens));
            }
            Role::Other => lines.push(format!("- other message ({} tokens)", m.tokens)),
        }
    }
    fit(lines, (max_tokens.saturating_mul(CHARS_PER_TOKEN)) as usize)
}

/// Keeps the `Task:` line and as many of the latest lines as fit in `budget` characters.
fn fit(lines: Vec<String>, budget: usize) -> String {
    let task = lines.iter().position(|l| l.starts_with("Task: "));
    let mut used = task.map_or(0, |t| lines[t].len() + 1);
    let mut kept: Vec<&str> = Vec::new();
    let mut omitted = 0;
    for (i, line) in lines.iter().enumerate().rev() {
        if Some(i) == task || line.starts_with("- … ") {
            continue;
        }
        if omitted == 0 && used + line.len() < budget {
            used += line.len() + 1;
            kept.push(line);
        } else {
            omitted += 1;
        }
    }
    let mut out = String::new();
    if let Some(t) = task {
        out.push_str(&lines[t]);
        out.push('\n');
    }
    if omitted > 0 {
        out.push_str(&format!("- … {omitted} earlier steps omitted\n"));
    }
    for line in kept.iter().rev() {
        out.push_str(line);
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

/// `name(arguments…)` of each tool call in an assistant message: chat's `tool_calls`, or an Anthropic turn's
/// `tool_use` blocks (`name`, `input`).
fn assistant_calls(message: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<Value>(message) else {
        return Vec::new();
    };
    let tool_uses: Vec<String> = value
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .map(|b| {
            let name = b.get("name").and_then(Value::as_str).unwrap_or("?");
            let input = b.get("input").map(Value::to_string).unwrap_or_default();
            let input: String = one_line(&input).chars().take(120).collect();
            format!("{name}({input})")
        })
        .collect();
    if !tool_uses.is_empty() {
        return tool_uses;
    }
    value
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|call| {
            let function = call.get("function");
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            let arguments = match function.and_then(|f| f.get("arguments")) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let arguments: String = one_line(&arguments).chars().take(120).collect();
            format!("{name}({arguments})")
        })
        .collect()
}

/// Whitespace runs collapsed to single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first `chars` characters of a content value (a JSON string, or text parts), decoded without decoding
/// the rest.
pub fn text_prefix(raw: &[u8], chars: usize) -> String {
    match raw.first() {
        Some(b'"') => string_prefix(raw, chars),
        Some(b'[') => {
            let Ok(parts) = serde_json::from_slice::<Vec<Value>>(raw) else {
                return String::new();
            };
            // Text parts, and an Anthropic `tool_result` block's content (a string or text blocks).
            let text: Vec<&str> = parts
                .iter()
                .flat_map(|p| match p.get("content") {
                    Some(Value::String(s)) => vec![s.as_str()],
                    Some(Value::Array(inner)) => inner
                        .iter()
                        .filter_map(|b| b.get("text").and_then(Value::as_str))
                        .collect(),
                    _ => p.get("text").and_then(Value::as_str).into_iter().collect(),
                })
                .collect();
            text.join(" ").chars().take(chars).collect()
        }
        _ => String::new(),
    }
}

fn string_prefix(raw: &[u8], chars: usize) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(chars.saturating_mul(6) + 16)]);
    let mut out = String::new();
    let mut count = 0;
    let mut iter = text.chars().skip(1);
    while let Some(c) = iter.next() {
        if count >= chars {
            break;
        }
        match c {
            '"' => break,
            '\\' => match iter.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r' | 'f' | 'b') => out.push(' '),
                Some('u') => {
                    let hex: String = iter.by_ref().take(4).collect();
                    let unit = u32::from_str_radix(&hex, 16).unwrap_or(0xfffd);
                    out.push(char::from_u32(unit).unwrap_or('\u{fffd}'));
                }
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
        count += 1;
    }
    out
}

/// The messages `from..end` as a plain transcript for a summary model, at most `max_chars`.
pub fn transcript(
    conversation: &Conversation,
    from: usize,
    end: usize,
    previous: Option<&str>,
    max_chars: usize,
) -> String {
    let body: &[u8] = &conversation.body;
    let messages = &conversation.messages;
    let names = tool_names(messages);
    let mut out = String::new();
    if let Some(previous) = previous {
        out.push_str("Summary of the conversation before this part:\n");
        out.push_str(previous);
        out.push_str("\n\n");
    }
    let per_message = (max_chars / (end.saturating_sub(from)).max(1)).clamp(200, 4000);
    for m in messages.iter().take(end).skip(from) {
        let raw = m.raw_content(body).unwrap_or_default();
        let who = match m.role {
            Role::System => continue,
            Role::User => "user".to_string(),
            Role::Assistant => "assistant".to_string(),
            Role::Tool => format!("tool {}", tool_of(m, &names).unwrap_or("?")),
            Role::Other => "other".to_string(),
        };
        out.push_str(&format!("[{who}] {}\n", text_prefix(raw, per_message)));
        if m.role == Role::Assistant {
            for call in assistant_calls(body.get(m.range.clone()).unwrap_or_default()) {
                out.push_str(&format!("[assistant called] {call}\n"));
            }
        }
        if out.len() > max_chars {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::config::context::SummaryMode;
    use crate::context::conversation::{Counter, render};
    use crate::proxy::request::inspect;
    use crate::tokens::Tokenizer;
    use crate::tokens::cache::MessageCache;
    use bytes::Bytes;
    use serde_json::json;
    use std::time::Duration;

    fn config() -> CompactionConfig {
        CompactionConfig {
            enabled: true,
            threshold: 0.5,
            keep_last_exchanges: 1,
            summary: SummaryMode::Extractive,
            summary_max_tokens: 500,
            summary_timeout: Duration::from_secs(1),
            cooldown: Duration::from_secs(60),
            max_consecutive: 2,
        }
    }

    fn agent(steps: usize) -> Bytes {
        let mut messages = vec![
            json!({"role": "system", "content": "You are an agent."}),
            json!({"role": "user", "content": "Fix the failing test in src/lib.rs"}),
        ];
        for i in 0..steps {
            messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": format!("a{i}"), "type": "function", "function": {"name": "read_file", "arguments": format!("{{\"path\":\"src/f{i}.rs\"}}")}},
                {"id": format!("b{i}"), "type": "function", "function": {"name": "grep", "arguments": "{\"q\":\"fn\"}"}}]}));
            messages.push(json!({"role": "tool", "tool_call_id": format!("a{i}"), "content": format!("fn f{i}() {{}}\n").repeat(40)}));
            messages.push(json!({"role": "tool", "tool_call_id": format!("b{i}"), "content": "src/a.rs:1: fn a()"}));
        }
        messages.push(json!({"role": "assistant", "content": "Done."}));
        Bytes::from(serde_json::to_vec(&json!({"model": "m", "messages": messages})).unwrap())
    }

    #[test]
    fn cuts_between_exchanges_and_keeps_pairs() {
        let body = agent(6);
        let cache = MessageCache::new(1 << 20);
        let tokenizer = Tokenizer::cl100k_base();
        let counter = Counter {
            tokenizer: &tokenizer,
            cache: &cache,
        };
        let conv = Conversation::read(body.clone(), &inspect(&body).unwrap().layout, &counter);
        let start = head_end(&conv.messages);
        assert_eq!(start, 1);
        let end = choose_end(&conv.messages, start, 2).unwrap();
        // The last two exchanges: the last tool step and the final answer.
        assert_eq!(conv.messages[end].role, Role::Assistant);
        assert_eq!(end, conv.messages.len() - 4);
        let occupancy = Occupancy {
            tokens: conv.total(),
            window: conv.total(),
            per_message: conv.messages.iter().map(|m| m.tokens).collect(),
        };
        let decision = decide(
            &conv.messages,
            &occupancy,
            &config(),
            None,
            false,
            |_| 0,
            Instant::now(),
        );
        let Decision::New { start, end, .. } = decision else {
            panic!("{decision:?}")
        };
        let digest = extractive(&conv, start, end, None, 500);
        assert!(digest.starts_with("Task: Fix the failing test"), "{digest}");
        assert!(
            digest.contains("read_file({\"path\":\"src/f0.rs\"})") || digest.contains("omitted")
        );
        let mut slots = vec![Slot::Keep; conv.messages.len()];
        let text = summary_text(end - start, 0, &digest);
        apply(
            &mut slots,
            &conv.messages,
            start,
            end,
            summary_message(&text),
        );
        let (out, _) = render(&conv, &slots).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        let kept = value["messages"].as_array().unwrap();
        assert_eq!(kept[0]["content"], "You are an agent.");
        assert!(
            kept[1]["content"]
                .as_str()
                .unwrap()
                .starts_with("[kimi-proxy compacted")
        );
        // Every kept tool result still has its call.
        let ids: Vec<&str> = kept
            .iter()
            .flat_map(|m| m["tool_calls"].as_array().into_iter().flatten())
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        for m in kept.iter().filter(|m| m["role"] == "tool") {
            assert!(ids.contains(&m["tool_call_id"].as_str().unwrap()));
        }
    }

    #[test]
    fn reuse_then_cooldown_then_limit() {
        let body = agent(6);
        let cache = MessageCache::new(1 << 20);
        let tokenizer = Tokenizer::cl100k_base();
        let counter = Counter {
            tokenizer: &tokenizer,
            cache: &cache,
        };
        let conv = Conversation::read(body.clone(), &inspect(&body).unwrap().layout, &counter);
        let per_message: Vec<u64> = conv.messages.iter().map(|m| m.tokens).collect();
        let end = choose_end(&conv.messages, 1, 1).unwrap();
        let state = Arc::new(State {
            start: 1,
            end,
            fingerprint: fingerprint(&conv.messages, 1, end),
            digest: Arc::from("x"),
            replaced: end - 1,
            replaced_tokens: 100,
            at: Instant::now(),
            consecutive: 0,
            kind: Arc::from("extractive"),
        });
        // Under the threshold once compacted: reused as it is.
        let roomy = Occupancy {
            tokens: conv.total(),
            window: conv.total() * 10,
            per_message: per_message.clone(),
        };
        let now = Instant::now();
        assert!(matches!(
            decide(
                &conv.messages,
                &roomy,
                &config(),
                Some(state.clone()),
                false,
                |_| 10,
                now
            ),
            Decision::Reuse(_)
        ));
        // Still over it: held by the cooldown, then by the limit.
        let full = Occupancy {
            tokens: conv.total(),
            window: 20,
            per_message,
        };
        assert!(matches!(
            decide(
                &conv.messages,
                &full,
                &config(),
                Some(state.clone()),
                false,
                |_| 10,
                now
            ),
            Decision::Held {
                reason: "cooldown",
                reuse: Some(_)
            }
        ));
        let later = now + Duration::from_secs(120);
        let tired = Arc::new(State {
            consecutive: 2,
            ..(*state).clone()
        });
        assert!(matches!(
            decide(
                &conv.messages,
                &full,
                &config(),
                Some(tired),
                false,
                |_| 10,
                later
            ),
            Decision::Held {
                reason: "consecutive limit",
                ..
            }
        ));
        // A different history does not reuse it.
        let other = Arc::new(State {
            fingerprint: 1,
            ..(*state).clone()
        });
        assert!(matches!(
            decide(
                &conv.messages,
                &roomy,
                &config(),
                Some(other),
                false,
                |_| 10,
                now
            ),
            Decision::Nothing
        ));
    }

    #[test]
    fn prefixes_decode_escapes_and_stop_early() {
        assert_eq!(text_prefix(br#""a\nb\u00e9c""#, 10), "a\nbéc");
        assert_eq!(text_prefix(br#""abcdef""#, 3), "abc");
        assert_eq!(text_prefix(br#"[{"type":"text","text":"hi"}]"#, 10), "hi");
        assert_eq!(text_prefix(b"null", 10), "");
    }
}
