//! `[store]` and `[ledgers]`: deserialized as they are, checked here.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units;

/// How requests without a client-given session id are grouped into sessions (`[store] session_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SessionMode {
    /// Recognise the conversation a request continues (by its message prefix); a new one starts a session.
    #[default]
    Conversation,
    /// Everything goes to the active session (one is created when none is active).
    Active,
}

impl SessionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Conversation => "conversation",
            SessionMode::Active => "active",
        }
    }
}

pub const DEFAULT_RESPONSES_RETENTION_DAYS: u32 = 30;
pub const DEFAULT_RESPONSES_MEMORY_MB: u64 = 64;

pub const DEFAULT_STORE_PREVIEW_CHARS: usize = 60;
pub const DEFAULT_STORE_QUEUE_CAPACITY: usize = 10_000;
pub const DEFAULT_STORE_BATCH_ROWS: usize = 512;
pub const DEFAULT_STORE_FLUSH_INTERVAL_MS: u64 = 100;

/// The embedded request store (`[store]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub enabled: bool,
    /// The database file as configured (a relative path is relative to the data directory); `None`: the
    /// default `<data-dir>/kimi-proxy.db`. The command line resolves the final path.
    pub path: Option<PathBuf>,
    /// A PostgreSQL store (`postgres://USER@HOST:PORT/DB`) instead of the SQLite file; `--db` overrides it. A
    /// secret: the URL may carry a password.
    pub url: Option<super::Secret>,
    /// Characters of the last user message kept as a preview (0: none).
    pub preview_chars: usize,
    /// Requests older than this many days are deleted at start and daily.
    pub retention_days: Option<u32>,
    /// Records waiting for the writer; more are dropped (and counted).
    pub queue_capacity: usize,
    /// Largest transaction, in rows.
    pub batch_rows: usize,
    /// Longest time a record waits for its transaction.
    #[serde(rename = "flush_interval_ms", deserialize_with = "units::ms")]
    pub flush_interval: Duration,
    /// As written; checked into [`StoreConfig::session_mode`] with the other values (all errors at once).
    #[serde(rename = "session_mode")]
    pub session_mode_name: Option<String>,
    #[serde(skip)]
    pub session_mode: SessionMode,
    /// Responses API state (`store: true`) is kept this long, then a `previous_response_id` naming it gets the
    /// API's 404 (OpenAI keeps stored responses 30 days).
    #[serde(rename = "responses_retention_days", deserialize_with = "units::days")]
    pub responses_retention: Duration,
    /// The in-memory index of stored responses in front of the database, in bytes.
    #[serde(rename = "responses_memory_mb", deserialize_with = "units::mb")]
    pub responses_memory_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enabled: true,
            path: None,
            url: None,
            preview_chars: DEFAULT_STORE_PREVIEW_CHARS,
            retention_days: None,
            queue_capacity: DEFAULT_STORE_QUEUE_CAPACITY,
            batch_rows: DEFAULT_STORE_BATCH_ROWS,
            flush_interval: Duration::from_millis(DEFAULT_STORE_FLUSH_INTERVAL_MS),
            session_mode_name: None,
            session_mode: SessionMode::Conversation,
            responses_retention: Duration::from_secs(
                u64::from(DEFAULT_RESPONSES_RETENTION_DAYS) * 86_400,
            ),
            responses_memory_bytes: DEFAULT_RESPONSES_MEMORY_MB * 1024 * 1024,
        }
    }
}

impl StoreConfig {
    pub fn resolve(&mut self, errors: &mut Vec<String>) {
        self.session_mode = match self.session_mode_name.as_deref() {
            None | Some("conversation") => SessionMode::Conversation,
            Some("active") => SessionMode::Active,
            Some(other) => {
                errors.push(format!(
                    "store.session_mode: unknown mode `{other}` (use \"conversation\" or \"active\")"
                ));
                SessionMode::Conversation
            }
        };
        for (name, zero) in [
            ("queue_capacity", self.queue_capacity == 0),
            ("batch_rows", self.batch_rows == 0),
            ("flush_interval_ms", self.flush_interval.is_zero()),
            ("retention_days", self.retention_days == Some(0)),
            (
                "responses_retention_days",
                self.responses_retention.is_zero(),
            ),
            ("responses_memory_mb", self.responses_memory_bytes == 0),
        ] {
            if zero {
                errors.push(format!("store.{name} must be greater than 0"));
            }
        }
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            errors.push("store.path must not be empty".to_string());
        }
        if let Some(url) = &self.url
            && !(url.expose().starts_with("postgres://")
                || url.expose().starts_with("postgresql://"))
        {
            errors.push(
                "store.url must be a PostgreSQL URL (postgres://USER@HOST:PORT/DB)".to_string(),
            );
        }
    }
}

/// `[ledgers]`: the agents whose usage records `serve` follows (`kimi-proxy import` reads them on demand).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgersConfig {
    /// Agent names (`claude-code`, `codex`, …).
    pub follow: Vec<String>,
    /// Watch the directories (inotify); off, or when the watcher cannot start, they are looked at every `poll`.
    pub watch: bool,
    /// How often the followed directories are looked at for new or grown files when not watched (at least
    /// 50 ms).
    #[serde(rename = "poll_ms", deserialize_with = "units::ms")]
    pub poll: Duration,
}

impl Default for LedgersConfig {
    fn default() -> Self {
        LedgersConfig {
            follow: Vec::new(),
            watch: true,
            poll: Duration::from_millis(500),
        }
    }
}

impl LedgersConfig {
    pub fn resolve(&mut self, errors: &mut Vec<String>) {
        self.poll = self.poll.max(Duration::from_millis(50));
        for name in &self.follow {
            if kimi_ledgers::Agent::from_name(name).is_none() {
                errors.push(format!(
                    "ledgers.follow: unknown agent `{name}` (claude-code, codex, cline, continue, kimi-cli)"
                ));
            }
        }
    }
}
