//! Claude Code transcripts: `<config dir>/projects/<project>/<session>.jsonl` and the subagents' sidechains
//! `<session>/subagents/*.jsonl`.
//!
//! Fields as ccusage reads them (ryoppippi/ccusage: `usageDataSchema` in its data loader, v18;
//! `rust/crates/ccusage/src/types.rs` `UsageEntry` and `adapter/claude/mod.rs`, v20): `timestamp`, `sessionId`,
//! `cwd`, `requestId`, `isSidechain`, `costUSD`, `message.id`, `message.model`, `message.usage.{input_tokens,
//! output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cache_creation.{ephemeral_5m_input_tokens,
//! ephemeral_1h_input_tokens}}`. An entry counts when it has `message.usage` with input and output tokens and a
//! valid timestamp. The same call repeated across files (resumed sessions) has the same `message.id` and
//! `requestId`: the key is both. A sidechain may replay a parent message with the same `message.id` but another
//! `requestId` (ccusage `adapter/claude/README.md`, issue #913); the entry carries `message_id` and `sidechain` so
//! the store drops such replays.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{LineReader, UsageEntry, offset_key, parse_timestamp_ms};

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "sessionId", borrow, default)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cwd: Option<Cow<'a, str>>,
    #[serde(rename = "requestId", borrow, default)]
    request_id: Option<Cow<'a, str>>,
    #[serde(rename = "isSidechain", default)]
    is_sidechain: Option<bool>,
    #[serde(rename = "costUSD", default)]
    cost_usd: Option<f64>,
    #[serde(borrow, default)]
    message: Option<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation: Option<CacheCreation>,
}

#[derive(Deserialize)]
struct CacheCreation {
    #[serde(default)]
    ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default)]
    ephemeral_1h_input_tokens: Option<u64>,
}

pub(crate) struct Reader {
    path: PathBuf,
    finder: memchr::memmem::Finder<'static>,
}

impl Reader {
    pub(crate) fn new(path: &Path) -> Reader {
        Reader {
            path: path.to_path_buf(),
            finder: memchr::memmem::Finder::new(b"\"usage\""),
        }
    }
}

fn owned(s: Option<Cow<'_, str>>) -> Option<String> {
    s.map(Cow::into_owned).filter(|s| !s.is_empty())
}

impl LineReader for Reader {
    fn line(&mut self, line: &[u8], offset: u64) -> Result<Option<UsageEntry>, ()> {
        // Most lines (user turns, tool results, summaries) hold no usage: skip them without parsing, but still
        // notice a torn one.
        if self.finder.find(line).is_none() {
            return if line.first() == Some(&b'{') && line.last() == Some(&b'}') {
                Ok(None)
            } else {
                Err(())
            };
        }
        let parsed: Line<'_> = serde_json::from_slice(line).map_err(|_| ())?;
        let Some(message) = parsed.message else {
            return Ok(None);
        };
        let Some(usage) = message.usage else {
            return Ok(None);
        };
        let (Some(input), Some(output)) = (usage.input_tokens, usage.output_tokens) else {
            return Ok(None);
        };
        let Some(timestamp_ms) = parsed.timestamp.as_deref().and_then(parse_timestamp_ms) else {
            return Err(());
        };
        let (split_5m, split_1h) = usage
            .cache_creation
            .as_ref()
            .map(|c| {
                (
                    c.ephemeral_5m_input_tokens.unwrap_or(0),
                    c.ephemeral_1h_input_tokens.unwrap_or(0),
                )
            })
            .unwrap_or((0, 0));
        let cache_creation = usage
            .cache_creation_input_tokens
            .unwrap_or(split_5m + split_1h);
        let message_id = owned(message.id);
        let request_id = owned(parsed.request_id);
        let key = match (&message_id, &request_id) {
            (Some(m), Some(r)) => format!("{m}:{r}"),
            _ => offset_key(&self.path, offset),
        };
        Ok(Some(UsageEntry {
            key,
            timestamp_ms,
            session: owned(parsed.session_id),
            project: owned(parsed.cwd),
            model: owned(message.model),
            message_id,
            request_id,
            input_tokens: input,
            output_tokens: output,
            cache_creation_tokens: cache_creation,
            cache_creation_1h_tokens: split_1h.min(cache_creation),
            cache_read_tokens: usage.cache_read_input_tokens.unwrap_or(0),
            reasoning_tokens: 0,
            agent_cost_usd: parsed.cost_usd,
            sidechain: parsed.is_sidechain == Some(true),
        }))
    }
}
