//! A chat request's messages as the context transforms see them: roles, tool-call links and token counts, read
//! from the body by byte range (no tree), and the body rebuilt with only the changed messages rewritten.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use xxhash_rust::xxh3::xxh3_128;

use super::masking::carries_output;
use super::observation::looks_like_error;
use crate::tokens::Tokenizer;
use crate::tokens::cache::MessageCache;
use crate::tokens::chat::RequestLayout;
use crate::tokens::chat::{
    REPLY_PRIMING, keyed_message_tokens, message_key, message_tokens, tools_tokens,
};

/// Every placeholder the proxy writes starts with this: a second pass leaves such content alone.
pub const MARKER: &str = "[kimi-proxy";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// `tool` or the older `function` result.
    Tool,
    /// Anything else, or a message the proxy could not read: never touched.
    #[default]
    Other,
}

/// One message: where it is, what links it, what it costs.
#[derive(Debug, Clone)]
pub struct Message {
    pub range: Range<usize>,
    pub role: Role,
    /// The `content` value (a JSON string or parts) in the body.
    pub content: Option<Range<usize>>,
    pub tokens: u64,
    /// Content hash of the message's bytes.
    pub hash: u64,
    /// The rest of what the message says about itself (shared through the [`FactsCache`]).
    pub facts: Arc<Facts>,
}

impl Message {
    pub fn content_is_string(&self) -> bool {
        self.facts.content_string
    }

    /// The raw JSON of the content.
    pub fn raw_content<'b>(&self, body: &'b [u8]) -> Option<&'b [u8]> {
        self.content.as_ref().and_then(|r| body.get(r.clone()))
    }

    /// Content the proxy wrote itself (a placeholder, a summary).
    pub fn is_placeholder(&self) -> bool {
        self.facts.placeholder
    }

    pub fn tool_call_id(&self) -> Option<&str> {
        self.facts.tool_call_id.as_deref()
    }

    pub fn name(&self) -> Option<&str> {
        self.facts.name.as_deref()
    }

    /// An assistant's tool calls: `(id, function name)`.
    pub fn calls(&self) -> &[(String, String)] {
        &self.facts.calls
    }
}

/// What a message says about itself, independent of where it sits in a body: read once per distinct message
/// (and tokenizer), then served from the [`FactsCache`], since an agent resends the same messages every turn.
/// The placeholders the transforms derived from it are kept here too.
#[derive(Debug, Default)]
pub struct Facts {
    pub role: Role,
    /// The content's range within the message's bytes.
    content: Option<Range<usize>>,
    pub tool_call_id: Option<Box<str>>,
    /// `name` of a `function` result (or of any message).
    pub name: Option<Box<str>>,
    /// An assistant's tool calls: `(id, function name)`.
    pub calls: Vec<(String, String)>,
    pub tokens: u64,
    pub hash: u64,
    pub content_string: bool,
    pub placeholder: bool,
    /// A tool result that looks like a failed call ([`super::observation::looks_like_error`]).
    pub error_like: bool,
    /// A user message carrying console or file output ([`super::masking::carries_output`]).
    pub console: bool,
    /// xxh3-128 of the content's JSON text: the masked original's id.
    pub content_key: u128,
    /// The observation rewrite, for the tool name it was made with.
    pub observed: OnceLock<(Box<str>, Rewrite)>,
    /// The masking rewrite, for the tool name it was made with.
    pub masked: OnceLock<(Option<Box<str>>, Rewrite)>,
}

impl Facts {
    /// Reads one message (`bytes`); its tokens come from the counter's cache under `key`.
    fn read(bytes: &[u8], hash: u64, key: u128, counter: &Counter<'_>) -> Facts {
        let tokens = keyed_message_tokens(bytes, key, counter.tokenizer, counter.cache).total();
        let mut facts = Facts {
            tokens,
            hash,
            ..Facts::default()
        };
        let Ok(raw) = serde_json::from_slice::<RawMessage<'_>>(bytes) else {
            return facts;
        };
        facts.role = match raw.role.as_deref() {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("tool" | "function") => Role::Tool,
            _ => Role::Other,
        };
        if let Some(content) = raw.content {
            let text = content.get().as_bytes();
            facts.content = Some(offset_in(bytes, text));
            facts.content_string = text.first() == Some(&b'"');
            facts.placeholder = text
                .get(1..)
                .is_some_and(|r| r.starts_with(MARKER.as_bytes()));
            facts.error_like = facts.role == Role::Tool && looks_like_error(text);
            facts.console = facts.role == Role::User && carries_output(text);
            if facts.content_string {
                facts.content_key = xxh3_128(text);
            }
        }
        facts.tool_call_id = raw.tool_call_id.map(|id| id.into());
        facts.name = raw.name.map(|n| n.into());
        facts.calls = raw
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|call| {
                (
                    call.id.map(Cow::into_owned).unwrap_or_default(),
                    call.function
                        .and_then(|f| f.name)
                        .map(Cow::into_owned)
                        .unwrap_or_default(),
                )
            })
            .collect();
        facts
    }

    /// What another API's message (an Anthropic Messages turn) says, read by its own reader: the role as
    /// the transforms treat it, its tokens and hash, the result it answers and the calls it makes.
    pub fn other_api(
        role: Role,
        tokens: u64,
        hash: u64,
        tool_call_id: Option<Box<str>>,
        calls: Vec<(String, String)>,
    ) -> Facts {
        Facts {
            role,
            tokens,
            hash,
            tool_call_id,
            calls,
            ..Facts::default()
        }
    }

    /// Approximate memory, for the cache's bound (placeholders made later are counted in advance).
    fn weight(&self) -> u32 {
        let strings = self.tool_call_id.as_deref().map_or(0, str::len)
            + self.name.as_deref().map_or(0, str::len)
            + self
                .calls
                .iter()
                .map(|(a, b)| a.len() + b.len() + 48)
                .sum::<usize>();
        u32::try_from(FACTS_BASE_BYTES + strings).unwrap_or(u32::MAX)
    }
}

/// A cached entry's own size plus room for its two placeholders.
const FACTS_BASE_BYTES: usize = 1024;

/// [`Facts`] by message cache key (the token cache's key: message bytes and tokenizer). Bounded by memory;
/// TinyLFU admission, like the token cache.
pub struct FactsCache {
    cache: moka::sync::Cache<u128, Arc<Facts>>,
}

impl FactsCache {
    pub fn new(max_bytes: u64) -> FactsCache {
        FactsCache {
            cache: moka::sync::Cache::builder()
                .weigher(|_, facts: &Arc<Facts>| facts.weight())
                .max_capacity(max_bytes)
                .build(),
        }
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// Token counts come from the per-message cache, keyed like the prompt count's.
pub struct Counter<'a> {
    pub tokenizer: &'a Tokenizer,
    pub cache: &'a MessageCache,
}

impl Counter<'_> {
    pub fn message(&self, bytes: &[u8]) -> u64 {
        self.message_and_hash(bytes).0
    }

    /// Tokens and content hash.
    pub fn message_and_hash(&self, bytes: &[u8]) -> (u64, u64) {
        let (tokens, hash) = message_tokens(bytes, self.tokenizer, self.cache);
        (tokens.total(), hash)
    }
}

/// The messages of one request.
pub struct Conversation {
    pub body: Bytes,
    pub messages: Vec<Message>,
    /// Tool definitions and the reply priming: part of the prompt, never changed.
    pub fixed_tokens: u64,
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<RawCall<'a>>>,
}

#[derive(Deserialize)]
struct RawCall<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<RawFunction<'a>>,
}

#[derive(Deserialize)]
struct RawFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

impl Conversation {
    /// Reads the messages at `layout` in `body`; counts come from `counter`. Nothing is remembered.
    pub fn read(body: Bytes, layout: &RequestLayout, counter: &Counter<'_>) -> Conversation {
        Self::read_with(body, layout, counter, None)
    }

    /// [`Conversation::read`], with what each message says taken from (and kept in) `cache`: a message seen
    /// before costs a hash of its bytes and one lookup.
    pub fn read_with(
        body: Bytes,
        layout: &RequestLayout,
        counter: &Counter<'_>,
        cache: Option<&FactsCache>,
    ) -> Conversation {
        let mut messages = Vec::with_capacity(layout.messages.len());
        for range in &layout.messages {
            let Some(bytes) = body.get(range.clone()) else {
                continue;
            };
            let (hash, key) = message_key(bytes, counter.tokenizer);
            let facts = match cache {
                Some(cache) => cache
                    .cache
                    .get_with(key, || Arc::new(Facts::read(bytes, hash, key, counter))),
                None => Arc::new(Facts::read(bytes, hash, key, counter)),
            };
            messages.push(Message {
                role: facts.role,
                content: facts
                    .content
                    .as_ref()
                    .map(|c| range.start + c.start..range.start + c.end),
                range: range.clone(),
                tokens: facts.tokens,
                hash: facts.hash,
                facts,
            });
        }
        let tools: Vec<&[u8]> = layout
            .tools
            .iter()
            .filter_map(|r| body.get(r.clone()))
            .collect();
        let mut fixed_tokens = if tools.is_empty() {
            0
        } else {
            tools_tokens(&tools, counter.tokenizer, counter.cache)
        };
        if !messages.is_empty() {
            fixed_tokens += REPLY_PRIMING;
        }
        Conversation {
            body,
            messages,
            fixed_tokens,
        }
    }

    /// The prompt's tokens as the counter sees them.
    pub fn total(&self) -> u64 {
        self.fixed_tokens + self.messages.iter().map(|m| m.tokens).sum::<u64>()
    }

    /// Index of the last assistant message.
    pub fn last_assistant(&self) -> Option<usize> {
        self.messages
            .iter()
            .rposition(|m| m.role == Role::Assistant)
    }
}

/// The function name of each tool call id, from the assistants' `tool_calls`.
pub fn tool_names(messages: &[Message]) -> std::collections::HashMap<&str, &str> {
    messages
        .iter()
        .flat_map(|m| m.calls().iter())
        .map(|(id, name)| (id.as_str(), name.as_str()))
        .collect()
}

/// The tool a result came from: its call's function name, else its own `name`.
pub fn tool_of<'m>(
    message: &'m Message,
    names: &std::collections::HashMap<&'m str, &'m str>,
) -> Option<&'m str> {
    message
        .tool_call_id()
        .and_then(|id| names.get(id).copied())
        .or(message.name())
        .filter(|n| !n.is_empty())
}

/// Where `part` (a slice of `body`) lies in `body`.
fn offset_in(body: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + part.len()
}

/// A message rewritten: its new bytes and their tokens.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub bytes: Vec<u8>,
    pub tokens: u64,
}

/// `message` with its content replaced by the JSON string of `text` (every other field kept byte for byte).
pub fn with_content(body: &[u8], message: &Message, text: &str) -> Option<Vec<u8>> {
    let content = message.content.as_ref()?;
    let quoted = serde_json::to_string(text).ok()?;
    let mut out = Vec::with_capacity(message.range.len() - content.len() + quoted.len());
    out.extend_from_slice(body.get(message.range.start..content.start)?);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(body.get(content.end..message.range.end)?);
    Some(out)
}

/// What goes where a message was.
#[derive(Debug, Clone)]
pub enum Slot {
    Keep,
    Rewrite(Rewrite),
    Drop,
    /// A new message inserted before this one (which is dropped or kept as `then` says).
    Insert {
        message: Vec<u8>,
        then: Box<Slot>,
    },
}

/// Rebuilds the body: unchanged messages copied, the others written as `slots` says. `None` when nothing
/// changed.
pub fn render(conversation: &Conversation, slots: &[Slot]) -> Option<(Bytes, Vec<Range<usize>>)> {
    if slots.iter().all(|s| matches!(s, Slot::Keep)) || slots.len() != conversation.messages.len() {
        return None;
    }
    let body = &conversation.body[..];
    let first = conversation.messages.first()?.range.start;
    let last = conversation.messages.last()?.range.end;
    let mut out = BytesMut::with_capacity(body.len());
    out.extend_from_slice(body.get(..first)?);
    let mut ranges = Vec::with_capacity(slots.len() + 1);
    let mut put = |out: &mut BytesMut, bytes: &[u8]| {
        if !ranges.is_empty() {
            out.extend_from_slice(b",");
        }
        let start = out.len();
        out.extend_from_slice(bytes);
        ranges.push(start..out.len());
    };
    for (message, slot) in conversation.messages.iter().zip(slots) {
        let mut slot = slot;
        if let Slot::Insert { message: new, then } = slot {
            put(&mut out, new);
            slot = then;
        }
        match slot {
            Slot::Keep => put(&mut out, body.get(message.range.clone())?),
            Slot::Rewrite(rewrite) => put(&mut out, &rewrite.bytes),
            Slot::Drop | Slot::Insert { .. } => {}
        }
    }
    out.extend_from_slice(body.get(last..)?);
    Some((out.freeze(), ranges))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::proxy::request::inspect;

    #[test]
    fn reads_roles_links_and_rewrites_in_place() {
        let body = br#"{"model":"m","messages":[ {"role":"system","content":"s"} , {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"read","arguments":"{}"}}]}, {"role":"tool","tool_call_id":"c1","content":"data"}]}"#;
        let view = inspect(body).unwrap();
        let cache = MessageCache::new(1 << 20);
        let tokenizer = Tokenizer::cl100k_base();
        let counter = Counter {
            tokenizer: &tokenizer,
            cache: &cache,
        };
        let conv = Conversation::read(Bytes::from_static(body), &view.layout, &counter);
        assert_eq!(
            conv.messages.iter().map(|m| m.role).collect::<Vec<_>>(),
            [Role::System, Role::Assistant, Role::Tool]
        );
        assert_eq!(conv.messages[1].calls(), [("c1".into(), "read".into())]);
        assert_eq!(conv.messages[2].tool_call_id(), Some("c1"));
        let rewritten = with_content(body, &conv.messages[2], "[kimi-proxy x]").unwrap();
        let slots = vec![
            Slot::Keep,
            Slot::Keep,
            Slot::Rewrite(Rewrite {
                bytes: rewritten,
                tokens: 1,
            }),
        ];
        let (out, _) = render(&conv, &slots).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["messages"][2]["content"], "[kimi-proxy x]");
        assert_eq!(value["messages"][2]["tool_call_id"], "c1");
        assert_eq!(value["messages"].as_array().unwrap().len(), 3);
        let again = Conversation::read(out.clone(), &inspect(&out).unwrap().layout, &counter);
        assert!(again.messages[2].is_placeholder());
        assert!(render(&conv, &[Slot::Keep, Slot::Keep, Slot::Keep]).is_none());
    }
}
