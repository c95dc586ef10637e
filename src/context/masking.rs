//! Masking of bulky output: a tool result (or a user message carrying console or file output) above a token
//! threshold becomes a placeholder with a preview, its token count and a content hash; the original is kept
//! in the store and served by `GET /api/mask/{hash}`.
//!
//! The placeholder is a function of the content alone, so an agent resending its history gets the same bytes
//! every turn (provider prompt caches keep working), and it is built once per content: later turns cost a
//! hash and a cache lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::conversation::{
    Conversation, Counter, MARKER, Message, Rewrite, Role, Slot, tool_names, tool_of, with_content,
};
use crate::config::context::MaskingConfig;

/// An original to keep.
#[derive(Debug, Clone)]
pub struct MaskedOriginal {
    /// 32 hex digits: xxh3-128 of the content's JSON text (an identifier, not an integrity check).
    pub hash: String,
    pub content: String,
    pub tokens: u64,
    pub preview: String,
    /// `tool`, `user`.
    pub role: &'static str,
    pub tool: Option<String>,
    pub created_at_ms: i64,
}

/// Where originals go. `keep` must not block; `false` when it could not take the original (queue full).
pub trait MaskSink: Send + Sync {
    fn keep(&self, original: MaskedOriginal) -> bool;
}

/// Placeholders already built, by content hash, and where new originals go.
pub struct MaskRegistry {
    placeholders: moka::sync::Cache<u128, Arc<str>>,
    sink: OnceLock<Arc<dyn MaskSink>>,
    pub originals_kept: AtomicU64,
    pub originals_dropped: AtomicU64,
}

/// Memory for remembered placeholders.
const PLACEHOLDER_CACHE_BYTES: u64 = 8 * 1024 * 1024;

impl Default for MaskRegistry {
    fn default() -> Self {
        MaskRegistry {
            placeholders: moka::sync::Cache::builder()
                .weigher(|_, v: &Arc<str>| (v.len() + 64).try_into().unwrap_or(u32::MAX))
                .max_capacity(PLACEHOLDER_CACHE_BYTES)
                .build(),
            sink: OnceLock::new(),
            originals_kept: AtomicU64::new(0),
            originals_dropped: AtomicU64::new(0),
        }
    }
}

impl MaskRegistry {
    /// Sets where originals are kept (once, at start-up).
    pub fn set_sink(&self, sink: Arc<dyn MaskSink>) {
        let _ = self.sink.set(sink);
    }

    pub fn has_sink(&self) -> bool {
        self.sink.get().is_some()
    }

    /// The placeholder for `raw` (a JSON string whose xxh3-128 is `key`), building and keeping the original on
    /// first sight.
    fn placeholder(
        &self,
        key: u128,
        raw: &[u8],
        tokens: u64,
        what: What<'_>,
        preview_chars: usize,
    ) -> Option<Arc<str>> {
        if let Some(found) = self.placeholders.get(&key) {
            return Some(found);
        }
        let text: String = serde_json::from_slice(raw).ok()?;
        let hash = format!("{key:032x}");
        let preview = head_and_tail(&text, preview_chars);
        let kept = match self.sink.get() {
            Some(sink) => {
                let accepted = sink.keep(MaskedOriginal {
                    hash: hash.clone(),
                    content: text,
                    tokens,
                    preview: preview.clone(),
                    role: what.role(),
                    tool: what.tool().map(str::to_string),
                    created_at_ms: crate::util::unix_ms(),
                });
                if accepted {
                    self.originals_kept.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Not cached: the next request offers it again.
                    self.originals_dropped.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                true
            }
            None => false,
        };
        let source = match what {
            What::Tool(Some(name)) => format!("output of tool `{name}`"),
            What::Tool(None) => "tool output".to_string(),
            What::Console => "console or file output".to_string(),
        };
        let whereabouts = if kept {
            format!("original: GET /api/mask/{hash}")
        } else {
            "original not kept".to_string()
        };
        let placeholder: Arc<str> = Arc::from(format!(
            "{MARKER} masked {tokens} tokens of {source}; id {hash}; {whereabouts}]\n{preview}"
        ));
        self.placeholders.insert(key, Arc::clone(&placeholder));
        Some(placeholder)
    }
}

#[derive(Clone, Copy)]
enum What<'a> {
    Tool(Option<&'a str>),
    Console,
}

impl What<'_> {
    fn role(&self) -> &'static str {
        match self {
            What::Tool(_) => "tool",
            What::Console => "user",
        }
    }
    fn tool(&self) -> Option<&str> {
        match self {
            What::Tool(name) => *name,
            What::Console => None,
        }
    }
}

/// Beginnings of user messages that carry pasted console or file output (lower case).
const CONSOLE_MARKERS: &[&str] = &[
    "@file",
    "@codebase",
    "@console",
    "@output",
    "```console",
    "```shell-session",
    "```output",
    "```log",
    "stdout:",
    "stderr:",
];

pub fn carries_output(raw: &[u8]) -> bool {
    let head = &raw[..raw.len().min(200)];
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    CONSOLE_MARKERS.iter().any(|m| head.contains(m))
}

/// Marks the messages to mask in `slots` (only where a slot is still `Keep`); returns how many.
pub fn plan(
    conversation: &Conversation,
    config: &MaskingConfig,
    counter: &Counter<'_>,
    registry: &MaskRegistry,
    slots: &mut [Slot],
) -> usize {
    let body: &[u8] = &conversation.body;
    let messages = &conversation.messages;
    // The messages after the last assistant message are what the model is about to read.
    let current_turn = if config.skip_current_turn {
        conversation.last_assistant().map_or(0, |i| i + 1)
    } else {
        messages.len()
    };
    let mut names = None;
    let mut masked = 0;
    for (index, message) in messages.iter().enumerate().take(current_turn) {
        if !matches!(slots.get(index), Some(Slot::Keep))
            || message.tokens <= config.threshold_tokens
            || !message.content_is_string()
            || message.is_placeholder()
        {
            continue;
        }
        let Some(raw) = message.raw_content(body) else {
            continue;
        };
        let what = match message.role {
            Role::Tool => {
                let names = names.get_or_insert_with(|| tool_names(messages));
                What::Tool(tool_of(message, names))
            }
            Role::User if message.facts.console => What::Console,
            _ => continue,
        };
        if let Some(rewrite) = rewrite(body, message, raw, what, config, counter, registry) {
            slots[index] = Slot::Rewrite(rewrite);
            masked += 1;
        }
    }
    masked
}

fn rewrite(
    body: &[u8],
    message: &Message,
    raw: &[u8],
    what: What<'_>,
    config: &MaskingConfig,
    counter: &Counter<'_>,
    registry: &MaskRegistry,
) -> Option<Rewrite> {
    let tool = what.tool();
    let made = match message.facts.masked.get() {
        Some((made_for, rewrite)) if made_for.as_deref() == tool => rewrite.clone(),
        _ => {
            let key = message.facts.content_key;
            let placeholder =
                registry.placeholder(key, raw, message.tokens, what, config.preview_chars)?;
            let bytes = with_content(body, message, &placeholder)?;
            let tokens = counter.message(&bytes);
            let rewrite = Rewrite { bytes, tokens };
            // Same bytes, same placeholder: the next turn reuses it.
            let _ = message
                .facts
                .masked
                .set((tool.map(Box::from), rewrite.clone()));
            rewrite
        }
    };
    (made.tokens < message.tokens).then_some(made)
}

/// Masking on an Anthropic Messages request (an Anthropic client of an Anthropic-native provider, whose request
/// is not rewritten as chat): a `tool_result` block whose content (a string, or one text block) has more tokens
/// than the threshold gets the same placeholder as a chat `tool` message with that content would (same key, same
/// registry, original kept). Blocks after the last assistant message are left alone when `skip_current_turn`.
/// Returns the block's new content (a JSON string), its tokens before and after, or `None` to keep it.
pub fn mask_tool_result_block(
    block: &super::anthropic::ToolResult<'_>,
    config: &MaskingConfig,
    tokenizer: &crate::tokens::Tokenizer,
    registry: &MaskRegistry,
) -> Option<(Vec<u8>, u64, u64)> {
    if config.skip_current_turn && block.in_current_turn {
        return None;
    }
    let raw_text = block.raw_text?;
    // A token covers at least a byte: shorter texts cannot pass the threshold.
    if (raw_text.get().len() as u64) <= config.threshold_tokens {
        return None;
    }
    let key = xxhash_rust::xxh3::xxh3_128(raw_text.get().as_bytes());
    let text = serde_json::from_str::<String>(raw_text.get()).ok()?;
    if text.starts_with(MARKER) {
        return None;
    }
    let tokens = tokenizer.count(&text) as u64;
    if tokens <= config.threshold_tokens {
        return None;
    }
    let placeholder = registry.placeholder(
        key,
        raw_text.get().as_bytes(),
        tokens,
        What::Tool(block.tool),
        config.preview_chars,
    )?;
    let placeholder_tokens = tokenizer.count(&placeholder) as u64;
    if placeholder_tokens >= tokens {
        return None;
    }
    let placeholder_json = serde_json::to_vec(&*placeholder).ok()?;
    Some((placeholder_json, tokens, placeholder_tokens))
}

/// About `chars` characters: the start (two thirds) and the end (one third) of `text`.
pub fn head_and_tail(text: &str, chars: usize) -> String {
    let total = text.chars().count();
    if total <= chars {
        return text.to_string();
    }
    let head_chars = chars * 2 / 3;
    let tail_chars = chars - head_chars;
    let head: String = text.chars().take(head_chars).collect();
    let tail: String = text.chars().skip(total - tail_chars).collect();
    format!("{head}\n[…]\n{tail}")
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
    use parking_lot::Mutex;
    use serde_json::{Value, json};

    #[derive(Default)]
    struct Kept(Mutex<Vec<MaskedOriginal>>);
    impl MaskSink for Kept {
        fn keep(&self, original: MaskedOriginal) -> bool {
            self.0.lock().push(original);
            true
        }
    }

    fn config() -> MaskingConfig {
        MaskingConfig {
            enabled: true,
            threshold_tokens: 100,
            preview_chars: 60,
            skip_current_turn: true,
        }
    }

    #[test]
    fn masks_bulky_old_tool_output_once_and_keeps_the_original() {
        let big = "line of grep output: src/main.rs:42: fn main() {}\n".repeat(100);
        let body = serde_json::to_vec(&json!({"model": "m", "messages": [
            {"role": "user", "content": "find main"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "grep", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": big},
            {"role": "assistant", "content": "found it"},
            {"role": "user", "content": format!("```console\n{big}")},
        ]}))
        .unwrap();
        let view = inspect(&body).unwrap();
        let cache = MessageCache::new(1 << 20);
        let tokenizer = Tokenizer::cl100k_base();
        let counter = Counter {
            tokenizer: &tokenizer,
            cache: &cache,
        };
        let registry = MaskRegistry::default();
        let kept = Arc::new(Kept::default());
        registry.set_sink(kept.clone());
        let conv = Conversation::read(Bytes::from(body.clone()), &view.layout, &counter);
        let mut slots = vec![Slot::Keep; conv.messages.len()];
        // The last user message is the current turn: left alone.
        assert_eq!(plan(&conv, &config(), &counter, &registry, &mut slots), 1);
        let (out, _) = render(&conv, &slots).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        let placeholder = value["messages"][2]["content"].as_str().unwrap();
        assert!(
            placeholder.starts_with("[kimi-proxy masked"),
            "{placeholder}"
        );
        assert!(placeholder.contains("tool `grep`"));
        assert!(placeholder.contains("GET /api/mask/"));
        assert_eq!(value["messages"][2]["tool_call_id"], "c1");
        assert_eq!(kept.0.lock().len(), 1);
        assert_eq!(kept.0.lock()[0].content, big);
        // Same content next turn: same bytes, nothing kept twice.
        let mut again = vec![Slot::Keep; conv.messages.len()];
        plan(&conv, &config(), &counter, &registry, &mut again);
        assert_eq!(render(&conv, &again).unwrap().0, out);
        assert_eq!(kept.0.lock().len(), 1);
        // With the current turn included, the pasted console output goes too.
        let mut all = vec![Slot::Keep; conv.messages.len()];
        let config = MaskingConfig {
            skip_current_turn: false,
            ..config()
        };
        assert_eq!(plan(&conv, &config, &counter, &registry, &mut all), 2);
    }

    #[test]
    fn preview_has_both_ends() {
        let text: String = (0..1000).map(|i| format!("{i} ")).collect();
        let preview = head_and_tail(&text, 30);
        assert!(preview.starts_with("0 1 2"));
        assert!(preview.ends_with("999 "));
        assert_eq!(head_and_tail("short", 30), "short");
    }
}
