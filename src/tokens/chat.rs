//! Prompt tokens of a chat request, framed the way OpenAI frames chat models: 3 tokens per message, 1 more for
//! a `name`, 3 to prime the reply. Text is counted exactly for the tokenizer; tool-call formatting, tool schemas
//! and images are estimates and are marked so.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use super::Tokenizer;
use super::cache::{MessageCache, MessageTokens, Role};

/// Byte ranges of a chat request's messages and tool definitions in its body: counting hashes these slices
/// without parsing the body again (the proxy's request scan finds them).
#[derive(Debug, Clone, Default)]
pub struct RequestLayout {
    pub messages: Vec<std::ops::Range<usize>>,
    pub tools: Vec<std::ops::Range<usize>>,
}

pub const TOKENS_PER_MESSAGE: u32 = 3;
pub const TOKENS_PER_NAME: u32 = 1;
pub const REPLY_PRIMING: u64 = 3;
/// Per tool call in an assistant message: the call's framing around its name and arguments (estimate).
pub const TOKENS_PER_TOOL_CALL: u32 = 3;
/// Per tool definition in `tools` (estimate), on top of its JSON's tokens.
pub const TOKENS_PER_TOOL_SCHEMA: u64 = 8;
/// An image at `detail: low`: OpenAI's fixed price.
pub const IMAGE_LOW_TOKENS: u32 = 85;
/// Any other image: a 1024×1024 image at high detail (85 + 4 tiles × 170). The size is unknown without decoding.
pub const IMAGE_DEFAULT_TOKENS: u32 = 765;

/// The prompt's token count with its breakdown.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PromptCount {
    pub total: u64,
    pub messages: u64,
    pub system: u64,
    pub user: u64,
    pub assistant: u64,
    pub tool_results: u64,
    pub tool_calls: u64,
    pub tools_schema: u64,
    pub media: u64,
    pub framing: u64,
    /// Some part (tool formatting, schemas, images) is an estimate.
    pub estimated: bool,
    pub cache_hits: u32,
    pub cache_misses: u32,
    /// A content hash per message, in order: conversations are recognised by their prefixes.
    #[serde(skip)]
    pub message_hashes: Vec<u64>,
    /// The start of the last user message (see [`preview`]).
    #[serde(skip)]
    pub preview: Option<String>,
}

#[derive(serde::Deserialize)]
struct RoleAndContent<'a> {
    #[serde(borrow, default)]
    role: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// The first `chars` characters of the last user message's text, whitespace collapsed; `None` when `chars` is
/// 0 or there is no user text. Only that one message is scanned, and only the beginning of its text is
/// decoded: the cost does not grow with the message.
pub fn preview(messages: &[&[u8]], chars: usize) -> Option<String> {
    if chars == 0 {
        return None;
    }
    for bytes in messages.iter().rev() {
        let raw = match user_content_fast(bytes) {
            Some(Some(raw)) => raw,
            Some(None) => continue,
            None => {
                let Ok(message) = serde_json::from_slice::<RoleAndContent<'_>>(bytes) else {
                    continue;
                };
                if message.role.as_deref() != Some("user") {
                    continue;
                }
                message.content?.get()
            }
        };
        let text = if raw.starts_with('"') {
            user_words(&json_string_prefix(raw, budget_for(raw, chars))).to_string()
        } else {
            // Content parts: the first text parts, each decoded from its start only; parts an agent injected
            // (a whole `<system-reminder>`) are skipped.
            let parts = serde_json::from_str::<Vec<TextPart<'_>>>(raw).ok()?;
            let mut text = String::new();
            for part in parts.iter().filter_map(|p| p.text) {
                if text.chars().count() > chars {
                    break;
                }
                let decoded = json_string_prefix(part.get(), budget_for(part.get(), chars));
                let words = user_words(&decoded);
                if !words.is_empty() {
                    text.push(' ');
                    text.push_str(words);
                }
            }
            text
        };
        if let Some(preview) = collapse(&text, chars) {
            return Some(preview);
        }
        // Only injected text in the last user message: say nothing rather than the agent's words.
        return None;
    }
    None
}

/// Finds a message's role and string content without scanning the whole message (a user message can be
/// megabytes of pasted code): `Some(Some(content))` for a user message with string content, `Some(None)` for
/// another role, `None` when unsure (then the caller parses the message).
fn user_content_fast(bytes: &[u8]) -> Option<Option<&str>> {
    // An unescaped `"role"` cannot occur inside a JSON string (its quotes would be escaped).
    // Searchers built once: building one costs more than running it on a short message.
    static ROLE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"role\""));
    static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\""));
    let role = value_after_key(bytes, &ROLE)?;
    if !role.starts_with(b"\"") {
        return None;
    }
    if !role.starts_with(b"\"user\"") {
        return Some(None);
    }
    let content = value_after_key(bytes, &CONTENT)?;
    if !content.starts_with(b"\"") {
        return None; // content parts: let serde read them
    }
    // Cut on a char boundary well past what a preview needs; the decoder stops at the budget anyway.
    let mut end = content.len().min(64 * 1024);
    while end < content.len() && (content[end] & 0xc0) == 0x80 {
        end += 1;
    }
    std::str::from_utf8(&content[..end]).ok().map(Some)
}

/// The bytes after `key` and its colon, when `key` occurs exactly once at the top level (checked loosely: once
/// in the whole message).
fn value_after_key<'a>(bytes: &'a [u8], key: &Finder<'static>) -> Option<&'a [u8]> {
    let at = key.find(bytes)?;
    let rest = &bytes[at + key.needle().len()..];
    if key.find(rest).is_some() {
        return None;
    }
    let rest = rest.trim_ascii_start().strip_prefix(b":")?;
    Some(rest.trim_ascii_start())
}

#[derive(serde::Deserialize)]
struct TextPart<'a> {
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

/// Whitespace runs collapsed to one space, cut at `chars` characters (with an ellipsis when cut).
fn collapse(text: &str, chars: usize) -> Option<String> {
    let mut out = String::new();
    let mut taken = 0;
    for word in text.split_whitespace() {
        if taken >= chars {
            out.push('…');
            return Some(out);
        }
        if taken > 0 {
            out.push(' ');
            taken += 1;
        }
        for c in word.chars() {
            if taken >= chars {
                out.push('…');
                return Some(out);
            }
            out.push(c);
            taken += 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Blocks a coding agent puts into a user message ahead of the user's own words: Claude Code's
/// `<system-reminder>` (a text block of its first message, captured against the proxy) and Cline's
/// `<environment_details>`. The preview, which names sessions, skips them.
const INJECTED_BLOCKS: [&str; 2] = ["system-reminder", "environment_details"];
/// Tags that wrap the user's own words (Cline's first message is `<task>…</task>`): the words are kept.
const WORD_WRAPPERS: [&str; 3] = ["task", "feedback", "user_query"];
/// Most text decoded to get past injected blocks.
const INJECTED_BUDGET: usize = 64 * 1024;

/// How much of a string to decode for a preview of `chars`: more when it starts with a tag an agent injects.
fn budget_for(raw: &str, chars: usize) -> usize {
    if raw.starts_with("\"<") {
        INJECTED_BUDGET
    } else {
        chars
    }
}

/// The user's words in `text`: leading injected blocks skipped, a wrapper tag dropped.
fn user_words(text: &str) -> &str {
    let mut rest = text.trim_start();
    'skip: loop {
        for tag in INJECTED_BLOCKS {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            if let Some(inner) = rest.strip_prefix(open.as_str()) {
                rest = match inner.find(close.as_str()) {
                    Some(end) => inner[end + close.len()..].trim_start(),
                    // The block runs past what was decoded: nothing of the user's is in reach.
                    None => "",
                };
                continue 'skip;
            }
        }
        break;
    }
    for tag in WORD_WRAPPERS {
        if let Some(inner) = rest.strip_prefix(format!("<{tag}>").as_str()) {
            let close = format!("</{tag}>");
            return inner.split(close.as_str()).next().unwrap_or(inner).trim();
        }
    }
    rest
}

/// Decodes the beginning of a JSON string literal (`raw` starts with its opening quote): about `chars`
/// characters plus room for whitespace runs, never the whole string.
fn json_string_prefix(raw: &str, chars: usize) -> String {
    let budget = chars.saturating_mul(4).max(64);
    let mut out = String::new();
    let mut iter = raw.chars().skip(1);
    while let Some(c) = iter.next() {
        if out.len() >= budget {
            break;
        }
        match c {
            '"' => break,
            '\\' => match iter.next() {
                Some('n' | 't' | 'r' | 'f' | 'b') => out.push(' '),
                Some('u') => {
                    let hex: String = iter.by_ref().take(4).collect();
                    let unit = u32::from_str_radix(&hex, 16).unwrap_or(0xfffd);
                    // A lone or paired surrogate is not worth decoding for a preview.
                    out.push(char::from_u32(unit).unwrap_or('\u{fffd}'));
                }
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    tools: Option<Vec<&'a RawValue>>,
}

/// Counts a chat request's prompt from its JSON bytes. Each message (and tool definition) is looked up in
/// `cache` by a hash of its bytes — resent history costs a hash, not a tokenisation — and parsed only on a miss.
pub fn count_request(body: &[u8], tokenizer: &Tokenizer, cache: &MessageCache) -> PromptCount {
    let Ok(request) = serde_json::from_slice::<RawRequest<'_>>(body) else {
        return PromptCount {
            estimated: true,
            ..Default::default()
        };
    };
    let messages: Vec<&[u8]> = request
        .messages
        .unwrap_or_default()
        .iter()
        .map(|m| m.get().as_bytes())
        .collect();
    let tools: Vec<&[u8]> = request
        .tools
        .unwrap_or_default()
        .iter()
        .map(|t| t.get().as_bytes())
        .collect();
    count_parts(&messages, &tools, tokenizer, cache)
}

/// Like [`count_request`], for a body whose messages and tools were already located (the proxy's scan).
pub fn count_layout(
    body: &[u8],
    layout: &RequestLayout,
    tokenizer: &Tokenizer,
    cache: &MessageCache,
    preview_chars: usize,
) -> PromptCount {
    let slice = |range: &std::ops::Range<usize>| body.get(range.clone());
    let messages: Vec<&[u8]> = layout.messages.iter().filter_map(slice).collect();
    let tools: Vec<&[u8]> = layout.tools.iter().filter_map(slice).collect();
    let mut count = count_parts(&messages, &tools, tokenizer, cache);
    count.preview = preview(&messages, preview_chars);
    count
}

/// One pass of xxh3-128 per message: the low half is the message's content hash (the same for every
/// tokenizer), the whole mixed with the tokenizer is the cache key.
fn hashes(bytes: &[u8], tokenizer_seed: u64) -> (u64, u128) {
    let hash = xxh3_128(bytes);
    let seed = u128::from(tokenizer_seed);
    (hash as u64, hash ^ (seed << 64 | seed))
}

/// One message's tokens through the cache, under the same key [`count_request`] uses: what the context
/// transforms look up is what the prompt count later finds.
/// Also returns the message's content hash (the one in [`PromptCount::message_hashes`]).
pub fn message_tokens(
    bytes: &[u8],
    tokenizer: &Tokenizer,
    cache: &MessageCache,
) -> (MessageTokens, u64) {
    let (hash, key) = message_key(bytes, tokenizer);
    (keyed_message_tokens(bytes, key, tokenizer, cache), hash)
}

/// A message's content hash and its cache key for `tokenizer` (one pass over the bytes), for callers that
/// keep their own per-message data under the same key.
pub fn message_key(bytes: &[u8], tokenizer: &Tokenizer) -> (u64, u128) {
    hashes(bytes, xxh3_64(tokenizer.name().as_bytes()))
}

/// [`message_tokens`] with the key from [`message_key`].
pub fn keyed_message_tokens(
    bytes: &[u8],
    key: u128,
    tokenizer: &Tokenizer,
    cache: &MessageCache,
) -> MessageTokens {
    cache
        .get_or_count(key, || match serde_json::from_slice::<Value>(bytes) {
            Ok(message) => count_message(&message, tokenizer),
            Err(_) => MessageTokens {
                estimated: true,
                ..Default::default()
            },
        })
        .0
}

/// Tokens of the tool definitions (estimate), through the cache.
pub fn tools_tokens(tools: &[&[u8]], tokenizer: &Tokenizer, cache: &MessageCache) -> u64 {
    count_parts(&[], tools, tokenizer, cache).tools_schema
}

fn count_parts(
    messages: &[&[u8]],
    tools: &[&[u8]],
    tokenizer: &Tokenizer,
    cache: &MessageCache,
) -> PromptCount {
    let mut count = PromptCount::default();
    let seed = xxh3_64(tokenizer.name().as_bytes());
    for bytes in messages {
        let (content_hash, key) = hashes(bytes, seed);
        count.message_hashes.push(content_hash);
        let (tokens, hit) =
            cache.get_or_count(key, || match serde_json::from_slice::<Value>(bytes) {
                Ok(message) => count_message(&message, tokenizer),
                Err(_) => MessageTokens {
                    estimated: true,
                    ..Default::default()
                },
            });
        if hit {
            count.cache_hits += 1;
        } else {
            count.cache_misses += 1;
        }
        count.messages += 1;
        count.framing += u64::from(tokens.framing);
        count.tool_calls += u64::from(tokens.tool_calls);
        count.media += u64::from(tokens.media);
        count.estimated |= tokens.estimated;
        let text = u64::from(tokens.text);
        match tokens.role {
            Role::System => count.system += text,
            Role::Assistant => count.assistant += text,
            Role::Tool => count.tool_results += text,
            Role::User | Role::ToolSchema => count.user += text,
        }
    }
    if count.messages > 0 {
        count.framing += REPLY_PRIMING;
    }
    for raw in tools {
        let (_, key) = hashes(raw, seed ^ TOOLS_SEED);
        let (tokens, _) = cache.get_or_count(key, || {
            let text = match serde_json::from_slice::<Value>(raw) {
                Ok(tool) => {
                    let definition = tool.get("function").unwrap_or(&tool);
                    tokenizer.count(&definition.to_string()) as u32
                }
                Err(_) => 0,
            };
            MessageTokens {
                text,
                role: Role::ToolSchema,
                estimated: true,
                ..Default::default()
            }
        });
        count.tools_schema += u64::from(tokens.text) + TOKENS_PER_TOOL_SCHEMA;
        count.estimated = true;
    }
    count.total = count.system
        + count.user
        + count.assistant
        + count.tool_results
        + count.tool_calls
        + count.tools_schema
        + count.media
        + count.framing;
    count
}

/// Separates tool-definition cache keys from message keys.
const TOOLS_SEED: u64 = 0x746f_6f6c_735f_5f5f;

/// Counts one message, uncached.
pub fn count_message(message: &Value, tokenizer: &Tokenizer) -> MessageTokens {
    let mut tokens = MessageTokens {
        framing: TOKENS_PER_MESSAGE,
        ..Default::default()
    };
    let Some(object) = message.as_object() else {
        return tokens;
    };
    if let Some(role) = object.get("role").and_then(Value::as_str) {
        tokens.framing += tokenizer.count(role) as u32;
        tokens.role = match role {
            "system" | "developer" => Role::System,
            "assistant" => Role::Assistant,
            "tool" | "function" => Role::Tool,
            _ => Role::User,
        };
    }
    if let Some(name) = object.get("name").and_then(Value::as_str) {
        tokens.framing += tokenizer.count(name) as u32 + TOKENS_PER_NAME;
    }
    match object.get("content") {
        Some(Value::String(text)) => tokens.text += tokenizer.count(text) as u32,
        Some(Value::Array(parts)) => {
            for part in parts {
                count_part(part, tokenizer, &mut tokens);
            }
        }
        _ => {}
    }
    if let Some(Value::String(refusal)) = object.get("refusal") {
        tokens.text += tokenizer.count(refusal) as u32;
    }
    if let Some(Value::String(reasoning)) = object.get("reasoning_content") {
        tokens.text += tokenizer.count(reasoning) as u32;
    }
    if let Some(calls) = object.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let function = call.get("function");
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let arguments = match function.and_then(|f| f.get("arguments")) {
                Some(Value::String(text)) => tokenizer.count(text),
                Some(other) => tokenizer.count(&other.to_string()),
                None => 0,
            };
            tokens.tool_calls += (tokenizer.count(name) + arguments) as u32 + TOKENS_PER_TOOL_CALL;
            tokens.estimated = true;
        }
    }
    if let Some(Value::String(id)) = object.get("tool_call_id") {
        tokens.framing += tokenizer.count(id) as u32;
        tokens.estimated = true;
    }
    tokens
}

fn count_part(part: &Value, tokenizer: &Tokenizer, tokens: &mut MessageTokens) {
    match part.get("type").and_then(Value::as_str) {
        Some("text" | "input_text") => {
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                tokens.text += tokenizer.count(text) as u32;
            }
        }
        Some("image_url" | "input_image") => {
            let detail = part
                .get("image_url")
                .and_then(|i| i.get("detail"))
                .and_then(Value::as_str);
            tokens.media += if detail == Some("low") {
                IMAGE_LOW_TOKENS
            } else {
                IMAGE_DEFAULT_TOKENS
            };
            tokens.estimated = true;
        }
        _ => {
            // Audio, files and unknown parts: not counted, so the figure is an estimate.
            tokens.estimated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn counted(request: &Value) -> PromptCount {
        count(
            request,
            &Tokenizer::cl100k_base(),
            &MessageCache::new(1 << 20),
        )
    }

    fn count(request: &Value, tokenizer: &Tokenizer, cache: &MessageCache) -> PromptCount {
        count_request(&serde_json::to_vec(request).unwrap(), tokenizer, cache)
    }

    #[test]
    fn matches_openai_cookbook_framing() {
        // OpenAI's cookbook example: these messages are 129 prompt tokens for gpt-4 / gpt-3.5-turbo-0613.
        let request = json!({"messages": [
            {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
            {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
            {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
            {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
            {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
            {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."}
        ]});
        let count = counted(&request);
        assert_eq!(count.total, 129);
        assert!(!count.estimated);
        assert_eq!(count.messages, 6);
    }

    #[test]
    fn parts_tools_and_images() {
        let request = json!({
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"cat\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "a cat"}
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        });
        let count = counted(&request);
        assert!(count.estimated);
        assert_eq!(count.media, u64::from(IMAGE_LOW_TOKENS));
        assert!(count.tool_calls > 0 && count.tools_schema > 0 && count.tool_results > 0);
        assert_eq!(
            count.total,
            count.user
                + count.assistant
                + count.tool_results
                + count.tool_calls
                + count.tools_schema
                + count.media
                + count.framing
                + count.system
        );
    }

    #[test]
    fn cache_makes_a_turn_count_only_new_messages() {
        let cache = MessageCache::new(1 << 20);
        let tokenizer = Tokenizer::cl100k_base();
        let mut messages = vec![json!({"role": "system", "content": "Be brief."})];
        let mut last_total = 0;
        for turn in 0..20 {
            messages.push(json!({"role": "user", "content": format!("question number {turn}")}));
            let counted = count(&json!({"messages": messages}), &tokenizer, &cache);
            // Turn 0: system + user; later turns: the previous answer + the new question.
            assert_eq!(counted.cache_misses, 2, "turn {turn}");
            assert!(counted.total > last_total);
            last_total = counted.total;
            // Same figure as an uncached count.
            let fresh = count(
                &json!({"messages": messages}),
                &tokenizer,
                &MessageCache::new(1 << 20),
            );
            assert_eq!(counted.total, fresh.total);
            messages.push(json!({"role": "assistant", "content": format!("answer {turn}")}));
        }
    }

    #[test]
    fn tokenizers_do_not_share_cache_entries() {
        let cache = MessageCache::new(1 << 20);
        let request =
            json!({"messages": [{"role": "user", "content": "naïve 世界 🎉 tokenization"}]});
        let cl = count(&request, &Tokenizer::cl100k_base(), &cache);
        let o = count(&request, &Tokenizer::o200k_base(), &cache);
        assert_eq!(o.cache_misses, 1);
        assert_eq!(
            cl.message_hashes, o.message_hashes,
            "content hashes do not depend on the tokenizer"
        );
    }

    #[test]
    fn preview_skips_what_an_agent_injected() {
        let claude_code = br#"{"role":"user","content":[{"type":"text","text":"<system-reminder>\nAs you answer the user's questions, you can use the following context: lots of it\n</system-reminder>"},{"type":"text","text":"say hi"}]}"#;
        assert_eq!(preview(&[claude_code], 30).as_deref(), Some("say hi"));
        let inline = br#"{"role":"user","content":"<system-reminder>rules</system-reminder>\nfix the parser"}"#;
        assert_eq!(preview(&[inline], 30).as_deref(), Some("fix the parser"));
        let cline = br#"{"role":"user","content":[{"type":"text","text":"<task>\nrename the module\n</task>"},{"type":"text","text":"<environment_details>\n# VSCode Visible Files\n</environment_details>"}]}"#;
        assert_eq!(preview(&[cline], 30).as_deref(), Some("rename the module"));
        let only_injected = br#"{"role":"user","content":"<system-reminder>x</system-reminder>"}"#;
        assert_eq!(preview(&[only_injected], 30), None);
        let plain = br#"{"role":"user","content":"<b>bold</b> words"}"#;
        assert_eq!(preview(&[plain], 30).as_deref(), Some("<b>bold</b> words"));
    }

    #[test]
    fn preview_is_the_start_of_the_last_user_message() {
        let messages = [
            &br#"{"role":"user","content":"first question"}"#[..],
            br#"{"role":"assistant","content":"answer"}"#,
            br#"{"role":"user","content":[{"type":"text","text":"  second\n\n question  is long"}]}"#,
            br#"{"role":"tool","content":"x"}"#,
        ];
        assert_eq!(preview(&messages, 15).as_deref(), Some("second question…"));
        let escaped = [&br#"{"role":"user","content":"caf\u00e9 \"quoted\"\ttab"}"#[..]];
        assert_eq!(
            preview(&escaped, 40).as_deref(),
            Some("café \"quoted\" tab")
        );
        for (message, expected) in [
            (
                &br#"{"content":"hi there","role":"user"}"#[..],
                Some("hi there"),
            ),
            (
                br#"{"role" : "user" , "content" : "spaced"}"#,
                Some("spaced"),
            ),
            (
                br#"{"role":"user","content":"a","extra":{"role":"system"}}"#,
                Some("a"),
            ),
            (br#"{"role":"assistant","content":"no"}"#, None),
        ] {
            assert_eq!(
                preview(&[message], 20).as_deref(),
                expected,
                "{}",
                String::from_utf8_lossy(message)
            );
        }
        let long = format!(
            r#"{{"role":"user","content":"{}"}}"#,
            "word ".repeat(100_000)
        );
        assert_eq!(
            preview(&[long.as_bytes()], 9).as_deref(),
            Some("word word…")
        );
        assert_eq!(
            preview(&messages, 100).as_deref(),
            Some("second question is long")
        );
        assert_eq!(preview(&messages, 0), None);
        assert_eq!(preview(&messages[1..2], 10), None);
    }

    #[test]
    fn odd_shapes_do_not_panic() {
        for request in [
            json!({}),
            json!({"messages": 5}),
            json!({"messages": [1, null, "x", {"content": 3}]}),
            json!({"tools": [1]}),
        ] {
            let _ = counted(&request);
        }
    }
}
