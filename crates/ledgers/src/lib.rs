//! Readers for the usage records coding agents keep on disk: Claude Code's transcripts, Codex's rollout files,
//! Cline's task history, Continue's dev data and Kimi CLI's wire logs. Paths and bytes in, typed
//! [`UsageEntry`]s out; no store, no runtime.
//!
//! Every format is taken from the agent's own source (cited in each reader's module). A torn or malformed line is
//! counted and skipped, never fatal; a file being written is read up to its last complete line, and a
//! [`Cursor`] lets a caller continue from there (following), noticing truncation and replacement.

mod claude;
mod cline;
mod codex;
mod continue_dev;
mod discover;
mod jsonl;
mod kimi;

use std::io;
use std::path::{Path, PathBuf};

pub use discover::{Env, ProcessEnv, default_roots, files_under};

/// The agents whose records can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Agent {
    ClaudeCode,
    Codex,
    Cline,
    Continue,
    KimiCli,
}

impl Agent {
    pub const ALL: [Agent; 5] = [
        Agent::ClaudeCode,
        Agent::Codex,
        Agent::Cline,
        Agent::Continue,
        Agent::KimiCli,
    ];

    /// The name used on the command line, in the configuration and as the `source` of imported usage.
    pub fn name(self) -> &'static str {
        match self {
            Agent::ClaudeCode => "claude-code",
            Agent::Codex => "codex",
            Agent::Cline => "cline",
            Agent::Continue => "continue",
            Agent::KimiCli => "kimi-cli",
        }
    }

    pub fn from_name(name: &str) -> Option<Agent> {
        Agent::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether the agent appends to its files (JSONL, read from an offset) or rewrites one whole document
    /// (Cline's task history, whose entries are aggregates that grow: a later read replaces them).
    pub fn append_only(self) -> bool {
        !matches!(self, Agent::Cline)
    }

    /// Whether `path` is one of this agent's record files (by name).
    pub fn is_record_file(self, path: &Path) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        match self {
            Agent::ClaudeCode => name.ends_with(".jsonl"),
            Agent::Codex => name.starts_with("rollout-") && name.ends_with(".jsonl"),
            Agent::Cline => name == "taskHistory.json",
            Agent::Continue => name == "tokensGenerated.jsonl",
            Agent::KimiCli => name == "wire.jsonl",
        }
    }
}

impl std::fmt::Display for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One model call (or, for Cline, one task's aggregate) as an agent recorded it. Token counts do not overlap:
/// `input_tokens` excludes cache reads and cache writes (Codex's and Continue's totals are split accordingly).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageEntry {
    /// Unique within the agent: the same call read again (another file, a re-read) has the same key.
    pub key: String,
    /// Milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    pub session: Option<String>,
    /// The working directory (project) the agent ran in, when recorded.
    pub project: Option<String>,
    pub model: Option<String>,
    /// The provider's message id (Anthropic `msg_…`), for deduplication against proxied traffic.
    pub message_id: Option<String>,
    pub request_id: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Cache writes, all durations.
    pub cache_creation_tokens: u64,
    /// Of `cache_creation_tokens`, those written for one hour (Anthropic prices them higher than 5 minutes).
    pub cache_creation_1h_tokens: u64,
    pub cache_read_tokens: u64,
    /// Reasoning tokens, included in `output_tokens` (informational).
    pub reasoning_tokens: u64,
    /// The cost the agent itself recorded, when it did.
    pub agent_cost_usd: Option<f64>,
    /// A Claude Code sidechain (subagent) entry.
    pub sidechain: bool,
}

impl UsageEntry {
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_creation_tokens + self.cache_read_tokens
    }
}

/// Identifies a file across reads (device and inode on unix), to notice rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub device: u64,
    pub inode: u64,
}

/// Where a previous read of a file stopped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cursor {
    /// Bytes consumed: the end of the last complete line.
    pub offset: u64,
    pub identity: Option<FileIdentity>,
    /// Reader state carried between reads (Codex's running totals, model and project), opaque JSON.
    pub state: Option<String>,
    /// For whole-document files (Cline): the length and modification time last read, to skip unchanged files.
    pub stamp: Option<(u64, i64)>,
}

/// What one read of a file did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileRead {
    pub cursor: Cursor,
    /// Entries handed to the sink.
    pub entries: u64,
    /// Lines (or documents, or array items) that could not be parsed, skipped.
    pub malformed: u64,
    /// Bytes consumed by this read.
    pub bytes: u64,
    /// The file was replaced or truncated since the cursor: it was read from the start.
    pub restarted: bool,
    /// Bytes after the last complete line, left for a later read.
    pub pending_bytes: u64,
}

/// Reads `path` as a record file of `agent` from `cursor`, handing each entry to `sink`. Memory is bounded by
/// the longest line, whatever the file's size.
pub fn read_file(
    agent: Agent,
    path: &Path,
    cursor: &Cursor,
    sink: &mut dyn FnMut(UsageEntry),
) -> io::Result<FileRead> {
    match agent {
        Agent::ClaudeCode => jsonl::read(path, cursor, &mut claude::Reader::new(path), sink),
        Agent::Codex => jsonl::read(path, cursor, &mut codex::Reader::new(path, cursor), sink),
        Agent::Continue => jsonl::read(path, cursor, &mut continue_dev::Reader::new(path), sink),
        Agent::KimiCli => jsonl::read(path, cursor, &mut kimi::Reader::new(path), sink),
        Agent::Cline => cline::read(path, cursor, sink),
    }
}

/// A reader of one JSONL format: told each complete line with its byte offset.
pub(crate) trait LineReader {
    /// `Err(())` counts the line as malformed; `Ok(None)` is a line without usage.
    #[allow(clippy::result_unit_err)]
    fn line(&mut self, line: &[u8], offset: u64) -> Result<Option<UsageEntry>, ()>;
    /// State to carry to the next read.
    fn state(&self) -> Option<String> {
        None
    }
}

/// An RFC 3339 timestamp as milliseconds since the epoch.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    let ts: jiff::Timestamp = text.parse().ok()?;
    Some(ts.as_millisecond())
}

/// The file's identity (unix), for [`Cursor::identity`].
pub fn file_identity(meta: &std::fs::Metadata) -> Option<FileIdentity> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// A fallback entry key: the file and the line's offset (for records without ids).
pub(crate) fn offset_key(path: &Path, offset: u64) -> String {
    format!("{}#{offset}", path.display())
}

/// Every record file of `agent` under `roots` (each a directory or a file), sorted.
pub fn record_files(agent: Agent, roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for root in roots {
        files_under(agent, root, &mut files);
    }
    files.sort();
    files.dedup();
    files
}
