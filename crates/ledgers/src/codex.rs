//! Codex CLI rollout files: `$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<time>-<id>.jsonl` (and
//! `archived_sessions/`).
//!
//! Format from openai/codex `codex-rs/protocol/src/protocol.rs`: each line is a `RolloutLine { timestamp,
//! #[serde(flatten)] item: RolloutItem }` with `RolloutItem` tagged `type`/`payload` (snake_case):
//! `session_meta` (`payload.id`, `payload.cwd`), `turn_context` (`payload.cwd`, `payload.model`) and `event_msg`,
//! whose `token_count` event holds `info: TokenUsageInfo { total_token_usage, last_token_usage }`, each a
//! `TokenUsage { input_tokens, cached_input_tokens, output_tokens, reasoning_output_tokens, total_tokens }`.
//! `input_tokens` includes `cached_input_tokens` (ccusage `adapter/codex/README.md`): the entry's input is the
//! difference. The per-turn delta is taken from the cumulative `total_token_usage` (a repeated event with
//! unchanged totals adds nothing); `last_token_usage` only when the totals are missing or went backwards.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Cursor, LineReader, UsageEntry, offset_key, parse_timestamp_ms};

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    /// Parsed further only for the kinds read: the other items' payloads have shapes of their own.
    #[serde(borrow, default)]
    payload: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cwd: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    info: Option<Info>,
}

#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    total_token_usage: Option<TokenUsage>,
    #[serde(default)]
    last_token_usage: Option<TokenUsage>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
struct TokenUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    cached_input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    reasoning_output_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

impl TokenUsage {
    fn minus(&self, before: &TokenUsage) -> Option<TokenUsage> {
        Some(TokenUsage {
            input_tokens: self.input_tokens.checked_sub(before.input_tokens)?,
            cached_input_tokens: self
                .cached_input_tokens
                .checked_sub(before.cached_input_tokens)?,
            output_tokens: self.output_tokens.checked_sub(before.output_tokens)?,
            reasoning_output_tokens: self
                .reasoning_output_tokens
                .checked_sub(before.reasoning_output_tokens)?,
            total_tokens: self.total_tokens.checked_sub(before.total_tokens)?,
        })
    }

    fn is_zero(&self) -> bool {
        self.input_tokens == 0
            && self.cached_input_tokens == 0
            && self.output_tokens == 0
            && self.reasoning_output_tokens == 0
    }
}

/// What a read carries to the next one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    session: Option<String>,
    cwd: Option<String>,
    model: Option<String>,
    totals: Option<TokenUsage>,
}

pub(crate) struct Reader {
    path: PathBuf,
    state: State,
}

impl Reader {
    pub(crate) fn new(path: &Path, cursor: &Cursor) -> Reader {
        let state = cursor
            .state
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .filter(|_| cursor.offset > 0)
            .unwrap_or_else(|| State {
                session: session_from_file_name(path),
                ..State::default()
            });
        Reader {
            path: path.to_path_buf(),
            state,
        }
    }
}

/// `rollout-2025-05-07T17-24-21-<uuid>.jsonl` → the uuid (the last five dash-separated groups).
fn session_from_file_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let parts: Vec<&str> = stem.rsplitn(6, '-').collect();
    if parts.len() == 6 {
        let mut id: Vec<&str> = parts[..5].to_vec();
        id.reverse();
        Some(id.join("-"))
    } else {
        Some(stem.to_string())
    }
}

fn owned(s: Option<Cow<'_, str>>) -> Option<String> {
    s.map(Cow::into_owned).filter(|s| !s.is_empty())
}

impl LineReader for Reader {
    fn line(&mut self, line: &[u8], offset: u64) -> Result<Option<UsageEntry>, ()> {
        let parsed: Line<'_> = serde_json::from_slice(line).map_err(|_| ())?;
        let Some(raw) = parsed.payload else {
            return Ok(None);
        };
        if !matches!(
            parsed.kind.as_deref(),
            Some("session_meta" | "turn_context" | "event_msg")
        ) {
            return Ok(None);
        }
        let Ok(payload) = serde_json::from_str::<Payload<'_>>(raw.get()) else {
            // Another event's payload (event_msg carries many): only a token_count that fails is malformed.
            return if raw.get().contains("\"token_count\"") {
                Err(())
            } else {
                Ok(None)
            };
        };
        match parsed.kind.as_deref() {
            Some("session_meta") => {
                if let Some(id) = owned(payload.id) {
                    self.state.session = Some(id);
                }
                if let Some(cwd) = owned(payload.cwd) {
                    self.state.cwd = Some(cwd);
                }
                Ok(None)
            }
            Some("turn_context") => {
                if let Some(cwd) = owned(payload.cwd) {
                    self.state.cwd = Some(cwd);
                }
                if let Some(model) = owned(payload.model) {
                    self.state.model = Some(model);
                }
                Ok(None)
            }
            Some("event_msg") if payload.kind.as_deref() == Some("token_count") => {
                let Some(info) = payload.info else {
                    return Ok(None);
                };
                let Some(timestamp_ms) = parsed.timestamp.as_deref().and_then(parse_timestamp_ms)
                else {
                    return Err(());
                };
                let previous = self.state.totals;
                let delta = match (info.total_token_usage, previous) {
                    (Some(total), Some(before)) => total.minus(&before).or(info.last_token_usage),
                    (Some(total), None) => Some(total),
                    (None, _) => info.last_token_usage,
                };
                if let Some(total) = info.total_token_usage {
                    self.state.totals = Some(total);
                }
                let Some(delta) = delta.filter(|d| !d.is_zero()) else {
                    return Ok(None);
                };
                let session = self.state.session.clone();
                let key = match (&session, info.total_token_usage) {
                    (Some(s), Some(total)) => format!(
                        "{s}:{}:{}:{}",
                        total.input_tokens, total.output_tokens, total.total_tokens
                    ),
                    _ => offset_key(&self.path, offset),
                };
                let cached = delta.cached_input_tokens.min(delta.input_tokens);
                Ok(Some(UsageEntry {
                    key,
                    timestamp_ms,
                    session,
                    project: self.state.cwd.clone(),
                    model: self.state.model.clone(),
                    message_id: None,
                    request_id: None,
                    input_tokens: delta.input_tokens - cached,
                    output_tokens: delta.output_tokens,
                    cache_creation_tokens: 0,
                    cache_creation_1h_tokens: 0,
                    cache_read_tokens: cached,
                    reasoning_tokens: delta.reasoning_output_tokens,
                    agent_cost_usd: None,
                    sidechain: false,
                }))
            }
            _ => Ok(None),
        }
    }

    fn state(&self) -> Option<String> {
        serde_json::to_string(&self.state).ok()
    }
}
