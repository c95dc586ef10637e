//! Context savings on an Anthropic Messages request sent to an Anthropic-native provider as the client wrote it:
//! tool results are `tool_result` blocks inside user messages, answering the `tool_use` blocks of the assistant
//! message before them (<https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use>: "the
//! `tool_result` blocks ... in the next `user` message", each with the `tool_use_id` it answers, its `content` a
//! string or a list of content blocks, and an optional `is_error`).
//!
//! One pass finds every `tool_result` block; observation masking and masking decide per block; only the blocks
//! they change are written again (the members of the block, its message and the request keep their bytes
//! otherwise, `tool_use_id` and `cache_control` included). Messages are never added, removed or reordered, so
//! every `tool_use` keeps its result.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::conversation::{Conversation, Counter, Facts, MARKER, Message, Role};
use super::masking::{MaskRegistry, mask_tool_result_block};
use super::observation::looks_like_error;
use super::{Outcome, Resolved};
use crate::config::context::ContextConfig;
use crate::tokens::Tokenizer;
use crate::tokens::cache::MessageTokens;
use crate::tokens::chat::{
    IMAGE_DEFAULT_TOKENS, REPLY_PRIMING, RequestLayout, TOKENS_PER_MESSAGE, TOKENS_PER_TOOL_CALL,
    message_key,
};
use crate::util::{JsonMembers, json_object};

/// One `tool_result` block, as the transforms see it.
pub struct ToolResult<'a> {
    /// Tool turns (assistant messages with `tool_use` blocks) before the block's message.
    pub turn: usize,
    /// Tool turns in the whole request.
    pub turns: usize,
    /// After the last assistant message: the turn the model is about to answer.
    pub in_current_turn: bool,
    /// The name of the tool whose `tool_use` it answers.
    pub tool: Option<&'a str>,
    /// `content` as sent (a string or a list of blocks).
    pub content: &'a RawValue,
    /// The content's text as a JSON string: the content itself, or its one text block's `text`.
    pub raw_text: Option<&'a RawValue>,
    pub is_error: bool,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(default)]
    is_error: Option<bool>,
}

fn member<'a>(m: &JsonMembers<'a>, key: &str) -> Option<&'a RawValue> {
    m.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn role(m: &JsonMembers<'_>) -> Option<String> {
    serde_json::from_str(member(m, "role")?.get()).ok()
}

/// Calls `decide` on every `tool_result` block of the request's user messages; a block it gives new content
/// (JSON bytes) is written again with that `content`. Returns the new body and how many blocks changed, or
/// `None` when nothing did (or the body is not a Messages request).
pub fn rewrite_tool_results(
    body: &[u8],
    mut decide: impl FnMut(&ToolResult<'_>) -> Option<Vec<u8>>,
) -> Option<(Vec<u8>, u32)> {
    let JsonMembers(top) = serde_json::from_slice(body).ok()?;
    let (_, raw_messages) = top.iter().find(|(k, _)| k == "messages")?;
    let messages: Vec<&RawValue> = serde_json::from_str(raw_messages.get()).ok()?;
    let parsed: Vec<JsonMembers<'_>> = messages
        .iter()
        .map(|m| serde_json::from_str(m.get()).unwrap_or(JsonMembers(Vec::new())))
        .collect();
    let current_turn = parsed
        .iter()
        .rposition(|m| role(m).as_deref() == Some("assistant"))
        .map_or(0, |i| i + 1);
    // Tool names by `tool_use` id, and which messages open a tool turn.
    let mut names: HashMap<String, String> = HashMap::new();
    let mut opens_turn = vec![false; parsed.len()];
    for (index, m) in parsed.iter().enumerate() {
        if role(m).as_deref() != Some("assistant") {
            continue;
        }
        let Some(content) = member(m, "content") else {
            continue;
        };
        let Ok(blocks) = serde_json::from_str::<Vec<Block<'_>>>(content.get()) else {
            continue;
        };
        for b in blocks {
            if b.kind.as_deref() == Some("tool_use") {
                opens_turn[index] = true;
                if let (Some(id), Some(name)) = (b.id, b.name) {
                    names.insert(id.into_owned(), name.into_owned());
                }
            }
        }
    }
    let turns = opens_turn.iter().filter(|t| **t).count();
    let mut turn = 0;
    let mut changed = 0u32;
    let mut new_messages: Vec<Option<Vec<u8>>> = vec![None; parsed.len()];
    for (index, m) in parsed.iter().enumerate() {
        if opens_turn[index] {
            turn += 1;
            continue;
        }
        if role(m).as_deref() != Some("user") {
            continue;
        }
        let Some(content) = member(m, "content") else {
            continue;
        };
        let Ok(blocks) = serde_json::from_str::<Vec<&RawValue>>(content.get()) else {
            continue;
        };
        let mut new_blocks: Vec<Option<Vec<u8>>> = vec![None; blocks.len()];
        for (b, raw_block) in blocks.iter().enumerate() {
            let Ok(JsonMembers(fields)) = serde_json::from_str::<JsonMembers<'_>>(raw_block.get())
            else {
                continue;
            };
            let Ok(block) = serde_json::from_str::<Block<'_>>(raw_block.get()) else {
                continue;
            };
            if block.kind.as_deref() != Some("tool_result") {
                continue;
            }
            let Some((_, result)) = fields.iter().find(|(k, _)| k == "content") else {
                continue;
            };
            let raw_text: Option<&RawValue> = if result.get().starts_with('"') {
                Some(result)
            } else {
                match serde_json::from_str::<Vec<Block<'_>>>(result.get())
                    .ok()
                    .as_deref()
                {
                    Some([only]) if only.kind.as_deref() == Some("text") => only.text,
                    _ => None,
                }
            };
            let view = ToolResult {
                turn,
                turns,
                in_current_turn: index >= current_turn,
                tool: block
                    .tool_use_id
                    .as_deref()
                    .and_then(|id| names.get(id))
                    .map(String::as_str),
                content: result,
                raw_text,
                is_error: block.is_error == Some(true),
            };
            let Some(new_content) = decide(&view) else {
                continue;
            };
            new_blocks[b] = Some(json_object(fields.iter().map(|(k, v)| {
                let value: &[u8] = if k == "content" {
                    &new_content
                } else {
                    v.get().as_bytes()
                };
                (k.as_ref(), value)
            })));
            changed += 1;
        }
        if new_blocks.iter().any(Option::is_some) {
            let mut content_bytes = vec![b'['];
            for (b, raw_block) in blocks.iter().enumerate() {
                if b > 0 {
                    content_bytes.push(b',');
                }
                match &new_blocks[b] {
                    Some(bytes) => content_bytes.extend_from_slice(bytes),
                    None => content_bytes.extend_from_slice(raw_block.get().as_bytes()),
                }
            }
            content_bytes.push(b']');
            new_messages[index] = Some(json_object(m.0.iter().map(|(k, v)| {
                let value: &[u8] = if k == "content" {
                    &content_bytes
                } else {
                    v.get().as_bytes()
                };
                (k.as_ref(), value)
            })));
        }
    }
    if changed == 0 {
        return None;
    }
    let mut messages_bytes = vec![b'['];
    for (i, raw) in messages.iter().enumerate() {
        if i > 0 {
            messages_bytes.push(b',');
        }
        match &new_messages[i] {
            Some(bytes) => messages_bytes.extend_from_slice(bytes),
            None => messages_bytes.extend_from_slice(raw.get().as_bytes()),
        }
    }
    messages_bytes.push(b']');
    let out = json_object(top.iter().map(|(k, v)| {
        let value: &[u8] = if k == "messages" {
            &messages_bytes
        } else {
            v.get().as_bytes()
        };
        (k.as_ref(), value)
    }));
    Some((out, changed))
}

/// Tokens of a block's content: its text's, or the whole content's JSON (images, several blocks).
fn content_tokens(block: &ToolResult<'_>, tokenizer: &Tokenizer) -> u64 {
    match block
        .raw_text
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    {
        Some(text) => tokenizer.count(&text) as u64,
        None => tokenizer.count(block.content.get()) as u64,
    }
}

/// Whether the block's content is one of the proxy's placeholders already.
fn is_placeholder(block: &ToolResult<'_>) -> bool {
    block.raw_text.is_some_and(|raw| {
        raw.get()
            .strip_prefix('"')
            .is_some_and(|text| text.starts_with(MARKER))
    })
}

/// Observation masking of one block, as chat's for a `tool` message (`observation::plan`): a result older than
/// the last `keep_last_tool_turns` tool turns becomes the same one-line placeholder naming the tool and its
/// size; results marked `is_error` or that look like errors stay with `keep_errors`. Returns the new content
/// (a JSON string) and the tokens before and after.
pub fn observe_tool_result_block(
    block: &ToolResult<'_>,
    config: &crate::config::context::ObservationConfig,
    tokenizer: &Tokenizer,
) -> Option<(Vec<u8>, u64, u64)> {
    let oldest_kept = block.turns.saturating_sub(config.keep_last_tool_turns) + 1;
    if (oldest_kept <= 1 && config.keep_last_tool_turns > 0) || block.turn >= oldest_kept {
        return None;
    }
    if is_placeholder(block) {
        return None;
    }
    if config.keep_errors && (block.is_error || looks_like_error(block.content.get().as_bytes())) {
        return None;
    }
    let tokens = content_tokens(block, tokenizer);
    let tool = block.tool.unwrap_or("unknown");
    let text = format!(
        "{MARKER}: earlier result of tool `{tool}` omitted ({tokens} tokens); call the tool again if it is needed]"
    );
    let after = tokenizer.count(&text) as u64;
    if after >= tokens {
        return None;
    }
    Some((serde_json::to_vec(&text).ok()?, tokens, after))
}

/// Observation masking then masking (as on chat requests: what observation empties need not be masked) on an
/// Anthropic request, as `resolved` turns them on. The outcome's figures cover the changed blocks (the whole
/// prompt is counted on its chat form elsewhere). `None` when nothing changed.
pub fn apply(
    body: &[u8],
    resolved: &Resolved,
    config: &ContextConfig,
    tokenizer: &Tokenizer,
    registry: &MaskRegistry,
) -> Option<(Vec<u8>, Outcome)> {
    let enabled = resolved.enabled;
    let (mut observed, mut masked) = (0u32, 0u32);
    let (mut before, mut saved_by_observation, mut saved_by_masking) = (0u64, 0u64, 0u64);
    let (new_body, _) = rewrite_tool_results(body, |block| {
        if enabled.observation
            && let Some((content, tokens, after)) =
                observe_tool_result_block(block, &config.observation, tokenizer)
        {
            observed += 1;
            before += tokens;
            saved_by_observation += tokens - after;
            return Some(content);
        }
        if enabled.masking
            && let Some((content, tokens, after)) =
                mask_tool_result_block(block, &config.masking, tokenizer, registry)
        {
            masked += 1;
            before += tokens;
            saved_by_masking += tokens - after;
            return Some(content);
        }
        None
    })?;
    let mut names = Vec::new();
    if enabled.observation {
        names.push("observe");
    }
    if enabled.masking {
        names.push("mask");
    }
    let after_masking = before - saved_by_masking;
    let tokens_after = after_masking - saved_by_observation;
    let outcome = Outcome {
        transforms: names.join(","),
        tokens_before: before,
        after_masking: enabled.masking.then_some(after_masking),
        after_observation: enabled.observation.then_some(tokens_after),
        tokens_after,
        masked_messages: masked,
        observed_messages: observed,
        ..Outcome::default()
    };
    Some((new_body, outcome))
}

/// Separates the Anthropic reader's cache entries from chat's: the same bytes count differently.
const ANTHROPIC_SEED: u128 = 0x616e_7468_726f_7069_635f_6d73_6773_5f5f;

/// Tokens of one content value of a Messages request (a string, or content blocks): text, `tool_use` name and
/// input, `tool_result` content, thinking; images at chat's fixed estimate; any other block by its JSON.
fn count_content(content: &serde_json::Value, tokenizer: &Tokenizer, tokens: &mut MessageTokens) {
    use serde_json::Value;
    let blocks = match content {
        Value::String(text) => {
            tokens.text += tokenizer.count(text) as u32;
            return;
        }
        Value::Array(blocks) => blocks,
        _ => return,
    };
    for block in blocks {
        let text = |key: &str| block.get(key).and_then(Value::as_str);
        match block.get("type").and_then(Value::as_str) {
            Some("text") => tokens.text += tokenizer.count(text("text").unwrap_or("")) as u32,
            Some("thinking") => {
                tokens.text += tokenizer.count(text("thinking").unwrap_or("")) as u32;
            }
            Some("image") => {
                tokens.media += IMAGE_DEFAULT_TOKENS;
                tokens.estimated = true;
            }
            Some("tool_use") => {
                let input = block.get("input").map(Value::to_string).unwrap_or_default();
                tokens.tool_calls += (tokenizer.count(text("name").unwrap_or(""))
                    + tokenizer.count(&input)) as u32
                    + TOKENS_PER_TOOL_CALL;
                tokens.estimated = true;
            }
            Some("tool_result") => {
                if let Some(inner) = block.get("content") {
                    count_content(inner, tokenizer, tokens);
                }
                tokens.framing += tokenizer.count(text("tool_use_id").unwrap_or("")) as u32;
                tokens.estimated = true;
            }
            _ => {
                tokens.text += tokenizer.count(&block.to_string()) as u32;
                tokens.estimated = true;
            }
        }
    }
}

/// How a member of a Messages request is counted.
#[derive(Clone, Copy)]
enum Part {
    /// A turn of `messages`.
    Message,
    /// A content value (`system`: a string or text blocks).
    Content,
    /// By its JSON (`tools`).
    Json,
}

/// Tokens of one member's JSON (a Messages message, `system` or `tools`), through the counter's cache.
fn cached_tokens(bytes: &[u8], counter: &Counter<'_>, kind: Part) -> (u64, u64) {
    let (hash, key) = message_key(bytes, counter.tokenizer);
    let (tokens, _) = counter.cache.get_or_count(key ^ ANTHROPIC_SEED, || {
        let mut tokens = MessageTokens {
            estimated: true,
            ..MessageTokens::default()
        };
        match (kind, serde_json::from_slice::<serde_json::Value>(bytes)) {
            (Part::Message, Ok(value)) => {
                tokens.framing = TOKENS_PER_MESSAGE;
                if let Some(role) = value.get("role").and_then(serde_json::Value::as_str) {
                    tokens.framing += counter.tokenizer.count(role) as u32;
                }
                if let Some(content) = value.get("content") {
                    count_content(content, counter.tokenizer, &mut tokens);
                }
            }
            (Part::Content, Ok(value)) => count_content(&value, counter.tokenizer, &mut tokens),
            _ => tokens.text = counter.tokenizer.count(&String::from_utf8_lossy(bytes)) as u32,
        }
        tokens
    });
    (tokens.total(), hash)
}

/// Where `part` (a slice of `body`) lies in `body`.
fn offset_in(body: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + part.len()
}

/// A Messages request's turns as compaction sees them, with their byte ranges (the layout) in `body`. A `user`
/// turn carrying `tool_result` blocks is a tool result (answering the `tool_use` blocks of the assistant turn
/// before it, so a cut never falls between the two); a `system` turn inside `messages` (Claude Code's
/// mid-conversation system beta) stays like chat's system messages; `system` and `tools` are the fixed part.
/// `None` when the body is not a Messages request.
pub fn read_conversation(
    body: Bytes,
    counter: &Counter<'_>,
) -> Option<(Conversation, RequestLayout)> {
    let top: JsonMembers<'_> = serde_json::from_slice(&body).ok()?;
    let raw_messages = member(&top, "messages")?;
    let raw: Vec<&RawValue> = serde_json::from_str(raw_messages.get()).ok()?;
    let mut messages = Vec::with_capacity(raw.len());
    let mut layout = RequestLayout::default();
    for m in raw {
        let bytes = m.get().as_bytes();
        let range = offset_in(&body, bytes);
        let fields: JsonMembers<'_> =
            serde_json::from_str(m.get()).unwrap_or(JsonMembers(Vec::new()));
        let content = member(&fields, "content");
        let blocks: Vec<Block<'_>> = content
            .and_then(|c| serde_json::from_str(c.get()).ok())
            .unwrap_or_default();
        let mut role = match role(&fields).as_deref() {
            Some("system") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            _ => Role::Other,
        };
        let mut answers = None;
        let mut calls = Vec::new();
        for b in &blocks {
            match b.kind.as_deref() {
                Some("tool_result") if role == Role::User => {
                    role = Role::Tool;
                    if answers.is_none() {
                        answers = b.tool_use_id.as_deref().map(Box::<str>::from);
                    }
                }
                Some("tool_use") if role == Role::Assistant => calls.push((
                    b.id.as_deref().unwrap_or_default().to_string(),
                    b.name.as_deref().unwrap_or_default().to_string(),
                )),
                _ => {}
            }
        }
        let (tokens, hash) = cached_tokens(bytes, counter, Part::Message);
        let facts = Facts::other_api(role, tokens, hash, answers, calls);
        messages.push(Message {
            range: range.clone(),
            role,
            content: content.map(|c| offset_in(&body, c.get().as_bytes())),
            tokens,
            hash,
            facts: Arc::new(facts),
        });
        layout.messages.push(range);
    }
    let mut fixed_tokens = if messages.is_empty() {
        0
    } else {
        REPLY_PRIMING
    };
    for (key, kind) in [("system", Part::Content), ("tools", Part::Json)] {
        if let Some(value) = member(&top, key) {
            fixed_tokens += cached_tokens(value.get().as_bytes(), counter, kind).0;
        }
    }
    Some((
        Conversation {
            body: body.clone(),
            messages,
            fixed_tokens,
        },
        layout,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::context::Outcome;
    use crate::tokens::cache::MessageCache;
    use serde_json::json;

    #[test]
    fn turns_are_read_with_their_links_and_tool_results_counted() {
        let listing = "src/file.rs: fn item() {}\n".repeat(50);
        let body = serde_json::to_vec(&json!({
            "model": "m",
            "system": "Be terse.",
            "messages": [
                {"role": "user", "content": "Look."},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "src"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": listing}]},
                {"role": "system", "content": "Mid-conversation note."},
                {"role": "assistant", "content": [{"type": "text", "text": "Seen."}]}
            ]
        }))
        .unwrap();
        let tokenizer = Tokenizer::cl100k_base();
        let cache = MessageCache::new(1 << 20);
        let counter = Counter {
            tokenizer: &tokenizer,
            cache: &cache,
        };
        let (conv, layout) = read_conversation(Bytes::from(body.clone()), &counter).unwrap();
        let roles: Vec<Role> = conv.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::System,
                Role::Assistant
            ]
        );
        assert_eq!(conv.messages[1].calls(), [("t1".into(), "Read".into())]);
        assert_eq!(conv.messages[2].tool_call_id(), Some("t1"));
        // The result's text is counted, not only its framing.
        assert!(conv.messages[2].tokens > tokenizer.count(&listing) as u64);
        assert!(conv.fixed_tokens > REPLY_PRIMING);
        for (m, range) in conv.messages.iter().zip(&layout.messages) {
            assert_eq!(&m.range, range);
            let value: serde_json::Value = serde_json::from_slice(&body[range.clone()]).unwrap();
            assert!(value.get("role").is_some());
        }
    }

    #[test]
    fn masking_then_compaction_reads_as_one_outcome_over_the_whole_prompt() {
        // Masking saved 900 of the 1000 tokens of the blocks it changed; compaction took the whole prompt
        // as masking left it (5000) down to 2000.
        let masked = Outcome {
            transforms: "mask".into(),
            tokens_before: 1000,
            after_masking: Some(100),
            tokens_after: 100,
            masked_messages: 1,
            ..Outcome::default()
        };
        let compacted = Outcome {
            transforms: "compact".into(),
            tokens_before: 5000,
            after_compaction: Some(2000),
            tokens_after: 2000,
            compacted_messages: 6,
            ..Outcome::default()
        };
        let both = masked.then(compacted);
        assert_eq!(both.transforms, "mask,compact");
        assert_eq!(both.tokens_before, 5900);
        assert_eq!(both.after_masking, Some(5000));
        assert_eq!(both.after_compaction, Some(2000));
        assert_eq!(both.tokens_saved(), 3900);
        assert_eq!((both.masked_messages, both.compacted_messages), (1, 6));
    }
}
