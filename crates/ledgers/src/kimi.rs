//! Kimi CLI: `$KIMI_SHARE_DIR` (else `~/.kimi`) `/sessions/<md5 of the work dir>/<session id>/wire.jsonl`.
//!
//! From MoonshotAI/kimi-cli: `src/kimi_cli/share.py` (the share dir), `metadata.py` (`WorkDirMeta.sessions_dir`),
//! `session.py` (`wire.jsonl` in the session directory), `wire/file.py` (a `{"type": "metadata", ...}` header,
//! then `WireMessageRecord { timestamp: float seconds, message: { type, payload } }`), `wire/types.py`
//! (`StatusUpdate { token_usage: TokenUsage | None, message_id, ... }`: the usage of the current step) and
//! `packages/kosong/src/kosong/chat_provider/__init__.py` (`TokenUsage { input_other, output, input_cache_read,
//! input_cache_creation }`, `input_other` excluding both caches). The wire log names no model: it is taken from
//! `config.toml` (`default_model`, resolved through `[models.<name>] model`) when present. Its `context.jsonl`
//! holds context sizes, not usage, and is not read.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{LineReader, UsageEntry, offset_key};

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(default)]
    timestamp: Option<f64>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Envelope<'a>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<StatusUpdate<'a>>,
}

#[derive(Deserialize)]
struct StatusUpdate<'a> {
    #[serde(default)]
    token_usage: Option<TokenUsage>,
    #[serde(borrow, default)]
    message_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct TokenUsage {
    #[serde(default)]
    input_other: u64,
    #[serde(default)]
    output: u64,
    #[serde(default)]
    input_cache_read: u64,
    #[serde(default)]
    input_cache_creation: u64,
}

pub(crate) struct Reader {
    path: PathBuf,
    session: Option<String>,
    project: Option<String>,
    model: Option<String>,
}

impl Reader {
    pub(crate) fn new(path: &Path) -> Reader {
        let session_dir = path.parent();
        let session = session_dir
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .map(str::to_string);
        // sessions/<work dir hash>/<session>/wire.jsonl: the share dir is three levels up.
        let share = session_dir
            .and_then(Path::parent)
            .and_then(Path::parent)
            .and_then(Path::parent);
        let project = session_dir
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .map(|hash| format!("kimi:{hash}"));
        let model = share.and_then(configured_model);
        Reader {
            path: path.to_path_buf(),
            session,
            project,
            model,
        }
    }
}

fn configured_model(share: &Path) -> Option<String> {
    let text = std::fs::read_to_string(share.join("config.toml")).ok()?;
    let config: toml::Table = text.parse().ok()?;
    let name = config.get("default_model")?.as_str()?.to_string();
    if name.is_empty() {
        return None;
    }
    let upstream = config
        .get("models")
        .and_then(|m| m.get(&name))
        .and_then(|m| m.get("model"))
        .and_then(|m| m.as_str())
        .map(str::to_string);
    Some(upstream.unwrap_or(name))
}

impl LineReader for Reader {
    fn line(&mut self, line: &[u8], offset: u64) -> Result<Option<UsageEntry>, ()> {
        // Only status updates carry usage; other messages' payloads have shapes of their own.
        if memchr::memmem::find(line, b"\"StatusUpdate\"").is_none() {
            return serde_json::from_slice::<serde::de::IgnoredAny>(line)
                .map(|_| None)
                .map_err(|_| ());
        }
        let record: Record<'_> = serde_json::from_slice(line).map_err(|_| ())?;
        if record.kind.as_deref() == Some("metadata") {
            return Ok(None);
        }
        let Some(message) = record.message else {
            return Ok(None);
        };
        if message.kind != "StatusUpdate" {
            return Ok(None);
        }
        let Some(payload) = message.payload else {
            return Ok(None);
        };
        let Some(usage) = payload.token_usage else {
            return Ok(None);
        };
        let Some(seconds) = record.timestamp.filter(|t| t.is_finite()) else {
            return Err(());
        };
        let message_id = payload
            .message_id
            .map(Cow::into_owned)
            .filter(|s| !s.is_empty());
        let key = match (&self.session, &message_id) {
            (Some(s), Some(m)) => format!("{s}:{m}"),
            _ => offset_key(&self.path, offset),
        };
        Ok(Some(UsageEntry {
            key,
            timestamp_ms: (seconds * 1000.0) as i64,
            session: self.session.clone(),
            project: self.project.clone(),
            model: self.model.clone(),
            message_id,
            request_id: None,
            input_tokens: usage.input_other,
            output_tokens: usage.output,
            cache_creation_tokens: usage.input_cache_creation,
            cache_creation_1h_tokens: 0,
            cache_read_tokens: usage.input_cache_read,
            reasoning_tokens: 0,
            agent_cost_usd: None,
            sidechain: false,
        }))
    }
}
