//! The `kimi-proxy` binary: parses the command line and wires the library together. `anyhow` lives only here.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kimi_proxy::cli::{self, Cli, Command};
use kimi_proxy::config::{self, Config, ProcessEnv};
use kimi_proxy::server;
use tokio_util::sync::CancellationToken;

/// jemalloc (the default feature), with a background thread that returns freed pages to the system within about
/// a second (`background_thread`, `dirty_decay_ms:1000`, `muzzy_decay_ms:0`, set at build time in
/// .cargo/config.toml; `_RJEM_MALLOC_CONF` overrides them at run time). At 1,000 streams and after them the RSS is
/// well below mimalloc's for the same throughput (BENCHMARKS.md, "Memory run after run").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// mimalloc (`--no-default-features --features mimalloc`): fast, but keeps freed pages while the workers idle.
/// Either beats glibc's malloc, which was ~10% of the proxy's CPU under load.
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::CountTokens(args) => count_tokens(args),
        Command::Sessions(args) => sessions(args),
        Command::Requests(args) => requests(args),
        Command::Import(args) => import(args),
        Command::Report(args) => report(args),
        Command::Migrate(args) => migrate(args),
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(args))
        }
    }
}

fn count_tokens(args: cli::CountTokensArgs) -> anyhow::Result<()> {
    use kimi_proxy::config::TokenizerSpec;
    use kimi_proxy::tokens::{Tokenizer, cache::MessageCache, chat};
    use std::io::Read;

    let tokenizer = match args.model.as_str() {
        "cl100k_base" | "cl100k" => Tokenizer::cl100k_base(),
        "o200k_base" | "o200k" => Tokenizer::o200k_base(),
        name => {
            let config = Config::load(args.config.config.as_deref(), &ProcessEnv)?;
            let catalog = kimi_proxy::proxy::route::Catalog::new(&config);
            let Some(model) = catalog.resolve(name) else {
                let close = catalog.suggestions(name);
                anyhow::bail!(
                    "unknown model or encoding `{name}` (closest: {})",
                    close.join(", ")
                );
            };
            match &model.tokenizer {
                TokenizerSpec::Cl100kBase => Tokenizer::cl100k_base(),
                TokenizerSpec::O200kBase => Tokenizer::o200k_base(),
                TokenizerSpec::File { path, pattern } => {
                    Tokenizer::from_tiktoken_file(path, pattern)?
                }
            }
        }
    };
    let mut input = String::new();
    match args.file.as_deref() {
        Some(path) if path != std::path::Path::new("-") => {
            input = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .read_to_string(&mut input)
                .context("cannot read standard input")?;
        }
    }
    let mut out = std::io::stdout().lock();
    if args.chat {
        serde_json::from_str::<serde::de::IgnoredAny>(&input).context("the input is not JSON")?;
        let count = chat::count_request(input.as_bytes(), &tokenizer, &MessageCache::new(1 << 20));
        if args.json {
            let mut value = serde_json::to_value(&count)?;
            value["tokenizer"] = tokenizer.name().into();
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        } else {
            writeln!(out, "{}", count.total)?;
            writeln!(
                out,
                "  messages {}  system {}  user {}  assistant {}  tool results {}  tool calls {}  tool schemas {}  media {}  framing {}{}",
                count.messages,
                count.system,
                count.user,
                count.assistant,
                count.tool_results,
                count.tool_calls,
                count.tools_schema,
                count.media,
                count.framing,
                if count.estimated {
                    "  (includes estimates)"
                } else {
                    ""
                }
            )?;
        }
    } else {
        let tokens = tokenizer.count(&input);
        if args.json {
            let value = serde_json::json!({"tokens": tokens, "bytes": input.len(), "tokenizer": tokenizer.name()});
            writeln!(out, "{value}")?;
        } else {
            writeln!(out, "{tokens}")?;
        }
    }
    Ok(())
}

/// Where a command that runs on both backends works: `--db` (a file or a PostgreSQL URL), then `[store] url`,
/// then the file.
fn db_location(args: &cli::DbArgs) -> anyhow::Result<kimi_proxy::store::pg::Location> {
    use kimi_proxy::store::pg::Location;
    let config = Config::load(args.config.as_deref(), &ProcessEnv)?;
    match (&args.db, &config.store.url) {
        (Some(db), _) if kimi_proxy::store::pg::is_postgres_url(&db.to_string_lossy()) => {
            Ok(Location::parse(&db.to_string_lossy())?)
        }
        (None, Some(url)) => Ok(Location::parse(url.expose())?),
        _ => {
            let data_dir = args.data_dir.clone().unwrap_or_else(cli::default_data_dir);
            Ok(Location::Sqlite(cli::resolve_db_path(
                args.db.clone(),
                config.store.path.as_deref(),
                &data_dir,
            )))
        }
    }
}

fn sessions(args: cli::SessionsArgs) -> anyhow::Result<()> {
    use kimi_proxy::store::cli as store_cli;
    let path = db_location(&args.db)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        cli::SessionsCommand::List { limit, sort, json } => {
            store_cli::sessions_list(&path, limit, &sort, json, &mut out)?
        }
        cli::SessionsCommand::Show { id, json } => {
            store_cli::sessions_show(&path, id, json, &mut out)?
        }
        cli::SessionsCommand::Export { id, format } => {
            store_cli::sessions_export(&path, id, &format, &mut out)?
        }
        cli::SessionsCommand::Delete { ids } => store_cli::sessions_delete(&path, &ids, &mut out)?,
    }
    Ok(())
}

fn requests(args: cli::RequestsArgs) -> anyhow::Result<()> {
    let path = db_location(&args.db)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        cli::RequestsCommand::Tail {
            lines,
            follow,
            json,
        } => kimi_proxy::store::cli::requests_tail(&path, lines, follow, json, &mut out)?,
    }
    Ok(())
}

fn import(args: cli::ImportArgs) -> anyhow::Result<()> {
    let config = Config::load(args.db.config.as_deref(), &ProcessEnv)?;
    let location = db_location(&args.db)?;
    let mut out = std::io::stdout().lock();
    kimi_proxy::ledgers::run_import(
        &location,
        &config,
        &args.agent,
        &args.path,
        args.json,
        &mut out,
    )?;
    Ok(())
}

fn report(args: cli::ReportArgs) -> anyhow::Result<()> {
    use kimi_proxy::ledgers::{Period, ReportOptions, parse_date};
    let location = db_location(&args.db)?;
    let options = ReportOptions {
        period: Period::parse(&args.period)?,
        since: args.since.as_deref().map(parse_date).transpose()?,
        until: args.until.as_deref().map(parse_date).transpose()?,
        timezone: args.timezone,
        source: args.source,
        project: args.project,
        breakdown: args.breakdown,
    };
    let mut out = std::io::stdout().lock();
    kimi_proxy::ledgers::run_report(&location, &options, args.json, &mut out)?;
    Ok(())
}

fn migrate(args: cli::MigrateArgs) -> anyhow::Result<()> {
    use kimi_proxy::store::{migrate, pg::PgUrl};
    let to = PgUrl::parse(&args.to)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = migrate::migrate(&args.from, &to, args.max_rows, &mut std::io::sink())?;
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        migrate::migrate(&args.from, &to, args.max_rows, &mut out)?;
    }
    Ok(())
}

async fn serve(args: cli::ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.config.as_deref(), &ProcessEnv)?;
    let missing = config.missing_variables();
    if !missing.is_empty() {
        // One line for all of them: a fresh install has most providers without a key, and that is fine.
        let list: Vec<String> = missing
            .iter()
            .map(|(provider, var)| format!("{provider} ({var})"))
            .collect();
        tracing::info!(
            "providers without a key, answering 503 unless the client sends its own: {}",
            list.join(", ")
        );
    }
    let data_dir = args.data_dir.unwrap_or_else(cli::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    // `--db` (or KIMI_PROXY_DB) names a file or a PostgreSQL URL and wins; then `[store] url`, then the file.
    let url = match &args.db {
        Some(db) if kimi_proxy::store::pg::is_postgres_url(&db.to_string_lossy()) => Some(
            kimi_proxy::config::Secret::new(db.to_string_lossy().into_owned()),
        ),
        Some(_) => None,
        None => config.store.url.clone(),
    };
    if url.is_none() {
        let db = cli::resolve_db_path(args.db, config.store.path.as_deref(), &data_dir);
        if config.store.enabled
            && let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the directory {}", parent.display()))?;
        }
        config.store.path = Some(db);
    }
    config.store.url = url;

    let listen = match (args.listen, config.server.listen) {
        (Some(addr), _) | (None, Some(addr)) => addr,
        (None, None) => cli::DEFAULT_LISTEN
            .parse()
            .context("default listen address")?,
    };
    kimi_proxy::auth::check_listen(listen, &config)?;
    if !listen.ip().is_loopback() && config.server.client_keys.is_empty() {
        tracing::warn!(%listen, "listening beyond loopback without virtual keys: anyone who can reach this address can use your provider keys through the proxy routes (set [[server.client_keys]])");
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
    let follower = kimi_proxy::ledgers::spawn_follower(&config, shutdown.clone());
    server::serve(Arc::new(config), listener, shutdown.clone()).await?;
    // The follower ends at its next look once shutdown has fired.
    shutdown.cancel();
    if let Some(follower) = follower {
        let _ = tokio::task::spawn_blocking(move || follower.join()).await;
    }
    tracing::info!("stopped");
    Ok(())
}
