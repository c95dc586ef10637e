//! `mock-upstream`: run the deterministic OpenAI-compatible mock as a server.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mock_upstream::{MockConfig, MockUpstream};

/// A deterministic OpenAI-compatible upstream for kimi-proxy's tests and benchmarks.
#[derive(Parser, Debug)]
#[command(name = "mock-upstream", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Default number of content chunks per completion.
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Default delay between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Default delay before the first streamed chunk, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = MockConfig {
        default_chunks: args.chunks,
        default_chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        default_ttft: Duration::from_millis(args.ttft_ms),
        required_key: None,
    };
    let mock = match MockUpstream::start_with(args.listen, config).await {
        Ok(mock) => mock,
        Err(err) => {
            eprintln!("mock-upstream: cannot listen on {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "mock-upstream listening on {}", mock.base_url());
    let _ = stdout.flush();
    drop(stdout);
    mock.serve_forever().await;
    ExitCode::SUCCESS
}
