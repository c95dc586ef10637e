//! Command-line interface. Every `serve` option can also come from the environment so scripts and service
//! managers can drive the proxy.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// The database's file name in the data directory.
pub const DEFAULT_DB_FILE: &str = "kimi-proxy.db";

#[derive(Debug, Parser)]
#[command(
    name = "kimi-proxy",
    version,
    about = "A transparent, token-counting proxy for OpenAI-compatible LLM providers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (and later the dashboard) on one port.
    Serve(ServeArgs),
    /// Validate a configuration file and print the resolved catalog, without secrets.
    CheckConfig(ConfigArgs),
    /// Count the tokens of a text (ordinary text, no special tokens) or, with --chat, of a chat request.
    CountTokens(CountTokensArgs),
    /// Sessions in the database (works while the server runs).
    Sessions(SessionsArgs),
    /// Requests in the database (works while the server runs).
    Requests(RequestsArgs),
    /// Import the usage a coding agent recorded on disk (idempotent: what was imported before is skipped).
    Import(ImportArgs),
    /// Usage by day, week, month, session or project: proxied requests and imported agent records together.
    Report(ReportArgs),
    /// Copy an SQLite store into PostgreSQL (resumable; verified by counts and totals at the end).
    Migrate(MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The SQLite database file to copy (kimi-proxy.db in the data directory by default).
    #[arg(long)]
    pub from: PathBuf,
    /// The PostgreSQL database to copy into: postgres://USER@HOST:PORT/DB (created or upgraded as `serve` does).
    #[arg(long, env = "KIMI_PROXY_MIGRATE_TO")]
    pub to: String,
    /// Copy at most this many rows in this run, then stop; the next run continues where this one stopped.
    #[arg(long)]
    pub max_rows: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// claude-code, codex, cline, continue, kimi-cli or all.
    pub agent: String,
    /// Read these files or directories instead of the agent's own places (repeatable).
    #[arg(long)]
    pub path: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// daily, weekly, monthly, session, project or source (per-agent totals).
    pub period: String,
    /// First day, inclusive (YYYY-MM-DD or YYYYMMDD, in the report's time zone).
    #[arg(long)]
    pub since: Option<String>,
    /// Last day, inclusive.
    #[arg(long)]
    pub until: Option<String>,
    /// IANA time zone the days are in (default: the system's).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Only this source: `proxy` or an agent (claude-code, codex, cline, continue, kimi-cli).
    #[arg(long)]
    pub source: Option<String>,
    /// Only this project (working directory).
    #[arg(long)]
    pub project: Option<String>,
    /// A line per model under each row.
    #[arg(long)]
    pub breakdown: bool,
    /// Print JSON: {"rows": [...], "totals": {...}}.
    #[arg(long)]
    pub json: bool,
}

/// Where the database is: `--db`, else `[store] path`, else `<data-dir>/kimi-proxy.db`.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// Configuration file (its `[store] path` is used).
    #[arg(long, env = "KIMI_PROXY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where the database and other state live.
    #[arg(long, env = "KIMI_PROXY_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The database: a file, or a PostgreSQL URL `postgres://USER@HOST:PORT/DB` (overrides `[store] path` and
    /// `[store] url`).
    #[arg(long, env = "KIMI_PROXY_DB", global = true)]
    pub db: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(subcommand)]
    pub command: SessionsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions, most recently active first.
    List {
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: u32,
        /// last_activity, created_at, cost or requests.
        #[arg(long, default_value = "last_activity")]
        sort: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one session with its aggregates and latest requests.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Write a session's requests to standard output.
    Export {
        id: i64,
        #[arg(long, default_value = "csv")]
        format: String,
    },
    /// Delete sessions and their requests.
    Delete {
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

#[derive(Debug, clap::Args)]
pub struct RequestsArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(subcommand)]
    pub command: RequestsCommand,
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Print the latest requests; --follow keeps printing new ones.
    Tail {
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        lines: u32,
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct CountTokensArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// A catalog model (its tokenizer is used) or an encoding: cl100k_base, o200k_base.
    #[arg(long, default_value = "cl100k_base")]
    pub model: String,
    /// The input is a chat-completions request (JSON): count its prompt the way the provider frames it.
    #[arg(long)]
    pub chat: bool,
    /// Print details as JSON.
    #[arg(long)]
    pub json: bool,
    /// Input file; `-` or nothing reads standard input.
    pub file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file, merged over the built-in catalog.
    #[arg(long, env = "KIMI_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address and port to listen on (port 0 picks a free one).
    #[arg(long, env = "KIMI_PROXY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the database and other state live.
    #[arg(long, env = "KIMI_PROXY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The database file (overrides `[store] path`; default `<data-dir>/kimi-proxy.db`).
    #[arg(long, env = "KIMI_PROXY_DB")]
    pub db: Option<PathBuf>,
}

/// The database file: the command line's, else the configured one (relative to the data directory), else
/// `<data-dir>/kimi-proxy.db`.
pub fn resolve_db_path(
    cli: Option<PathBuf>,
    configured: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> PathBuf {
    match (cli, configured) {
        (Some(path), _) => path,
        (None, Some(path)) if path.is_absolute() => path.to_path_buf(),
        (None, Some(path)) => data_dir.join(path),
        (None, None) => data_dir.join(DEFAULT_DB_FILE),
    }
}

/// `$XDG_DATA_HOME/kimi-proxy`, else `~/.local/share/kimi-proxy`, else `./kimi-proxy-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("kimi-proxy");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/kimi-proxy");
    }
    PathBuf::from("kimi-proxy-data")
}
