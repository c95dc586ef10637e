//! The `kimi-proxy` binary: parses the command line and wires the library together. `anyhow` lives only here.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kimi_proxy::cli::{self, Cli, Command};
use kimi_proxy::config::{self, Config, ProcessEnv};
use kimi_proxy::server;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KIMI_PROXY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    match cli.command {
        Command::CheckConfig(args) => {
            let config = Config::load(args.config.as_deref(), &ProcessEnv)?;
            let mut out = std::io::stdout().lock();
            out.write_all(config::describe(&config).as_bytes())?;
            for (provider, var) in config.missing_variables() {
                writeln!(
                    out,
                    "warning: provider `{provider}`: environment variable {var} is not set"
                )?;
            }
            writeln!(out, "configuration OK")?;
            Ok(())
        }
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(args))
        }
    }
}

async fn serve(args: cli::ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.config.as_deref(), &ProcessEnv)?;
    for (provider, var) in config.missing_variables() {
        tracing::warn!(provider = %provider, variable = %var, "environment variable is not set; requests to this provider get 503 unless the client sends its own key");
    }
    let data_dir = args.data_dir.unwrap_or_else(cli::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;

    let listen = match (args.listen, config.server.listen) {
        (Some(addr), _) | (None, Some(addr)) => addr,
        (None, None) => cli::DEFAULT_LISTEN
            .parse()
            .context("default listen address")?,
    };
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "listening beyond loopback: anyone who can reach this address can use your provider keys");
    }
    let listener = server::bind(listen).await?;
    let local = listener.local_addr().context("listener address")?;
    // Scripts and tests read this line to learn the port.
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "kimi-proxy listening on http://{local} (OpenAI base URL: http://{local}/v1)"
        )?;
        out.flush()?;
    }
    tracing::info!(models = config.models.len(), providers = config.providers.len(), data_dir = %data_dir.display(), "ready");

    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        server::shutdown_signal().await;
        trigger.cancel();
    });
    server::serve(Arc::new(config), listener, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
