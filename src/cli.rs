//! Command-line interface. Every `serve` option can also come from the environment so scripts and service
//! managers can drive the proxy.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

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
