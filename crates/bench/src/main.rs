//! `kimi-bench`: a benchmark anyone can rerun, kimi-proxy vs direct upstream.
//!
//! Builds `kimi-proxy` and `mock-upstream` in release, starts both on loopback, drives them with the
//! in-crate load generator (direct to the mock and through the proxy, alternating), and writes a markdown
//! report (default `bench-results/report.md`, also printed on stdout). Progress goes to stderr.

mod body;
mod cpu;
mod loadgen;
mod procs;
mod report;
mod scenarios;
mod sysinfo;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::loadgen::Spec;
use crate::procs::Server;
use crate::scenarios::{Memory, Results, Scenario, Settings, Targets};

/// Benchmark kimi-proxy against its mock upstream: proxy vs direct, same run, same machine.
#[derive(Parser, Debug)]
#[command(name = "kimi-bench", version, about)]
struct Args {
    /// Short run (under a minute): fewer requests, 100 concurrent streams only.
    #[arg(long)]
    quick: bool,
    /// Where the markdown report goes (the servers' logs go beside it).
    #[arg(long, default_value = "bench-results/report.md")]
    out: PathBuf,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "latency,throughput,streaming,streams-concurrency,memory"
    )]
    scenarios: Vec<Scenario>,
    /// Worker threads of the load generator's runtime (the servers need the other cores).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Rounds per side for latency, throughput and streaming (default 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// Stream counts for streams-concurrency, comma-separated (default 100,1000; --quick: 100).
    #[arg(long, value_delimiter = ',')]
    streams: Option<Vec<usize>>,
    /// Don't run `cargo build`; use the binaries already in target/release.
    #[arg(long)]
    skip_build: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut settings = Settings::new(args.quick);
    settings.args = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    settings.scenarios = args.scenarios.clone();
    settings.scenarios.sort();
    settings.scenarios.dedup();
    settings.threads = args.threads.max(1);
    if let Some(rounds) = args.rounds {
        settings.rounds = rounds.clamp(1, 100);
    }
    if let Some(streams) = &args.streams {
        settings.streams = streams.iter().copied().filter(|&n| n > 0).collect();
    }
    if settings.has(Scenario::StreamsConcurrency) {
        let most = settings.streams.iter().copied().max().unwrap_or(0);
        // The proxy holds two sockets per stream (client and upstream); keep headroom for everything else.
        let needed = u64::try_from(most).unwrap_or(u64::MAX).saturating_mul(2) + 1_024;
        let limit = procs::ensure_open_files(needed)?;
        eprintln!("kimi-bench: open-files limit {limit} (need {needed})");
    }

    let root = procs::workspace_root();
    let binaries = procs::build(&root, args.skip_build)?;
    let machine = sysinfo::Machine::collect(&root);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let results = runtime.block_on(async {
        tokio::select! {
            results = run(&settings, &binaries, &args.out) => results,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })?;
    // Stop stray connection tasks promptly.
    runtime.shutdown_timeout(Duration::from_secs(1));

    let text = report::render(&settings, &machine, &results);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&args.out, &text)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    print!("{text}");
    eprintln!("kimi-bench: report written to {}", args.out.display());
    Ok(())
}

/// A scratch directory removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> anyhow::Result<ScratchDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("kimi-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(
    settings: &Settings,
    binaries: &procs::Binaries,
    out: &Path,
) -> anyhow::Result<Results> {
    let scratch = ScratchDir::new()?;
    let log_dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;

    let mut mock = Server::start(
        "mock-upstream",
        &binaries.mock,
        &["--listen", "127.0.0.1:0"],
        &log_dir.join("mock-upstream.log"),
        "mock-upstream listening on",
    )
    .await?;
    let config_path = scratch.0.join("kimi-proxy.toml");
    std::fs::write(&config_path, procs::proxy_config(mock.addr))
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config_arg = config_path.to_string_lossy().into_owned();
    let data_arg = scratch.0.join("data").to_string_lossy().into_owned();
    let mut proxy = Server::start(
        "kimi-proxy",
        &binaries.proxy,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &config_arg,
            "--data-dir",
            &data_arg,
        ],
        &log_dir.join("kimi-proxy.log"),
        "kimi-proxy listening on",
    )
    .await?;
    eprintln!(
        "kimi-bench: mock-upstream on {} (pid {}), kimi-proxy on {} (pid {})",
        mock.addr, mock.pid, proxy.addr, proxy.pid
    );
    let targets = Targets {
        mock: mock.addr,
        proxy: proxy.addr,
        proxy_pid: proxy.pid,
    };

    let started = std::time::Instant::now();
    let watched = [std::process::id(), mock.pid, proxy.pid];
    let cpu_before = cpu::Snapshot::take(&watched);
    let mut results = Results::default();
    let mut memory = Memory::default();
    if settings.has(Scenario::Memory) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        memory.idle = procs::rss_bytes(proxy.pid);
    }

    let plain = body::chat_body(false);
    let streamed = body::chat_body(true);
    smoke_test(targets, &plain).await?;

    for scenario in &settings.scenarios {
        let scenario_start = std::time::Instant::now();
        match scenario {
            Scenario::Latency => {
                results.latency = Some(scenarios::latency(settings, targets, plain.clone()).await?);
            }
            Scenario::Throughput => {
                results.throughput =
                    Some(scenarios::throughput(settings, targets, plain.clone()).await?);
            }
            Scenario::Streaming => {
                results.streaming =
                    Some(scenarios::streaming(settings, targets, streamed.clone()).await?);
            }
            Scenario::StreamsConcurrency => {
                results.streams =
                    scenarios::streams_concurrency(settings, targets, streamed.clone()).await?;
            }
            Scenario::Memory => {}
        }
        mock.check_alive()?;
        proxy.check_alive()?;
        eprintln!(
            "kimi-bench: {} took {:.1} s",
            scenario.name(),
            scenario_start.elapsed().as_secs_f64()
        );
    }

    if settings.has(Scenario::Memory) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        memory.after_load = procs::rss_bytes(proxy.pid);
        memory.high_water = procs::peak_rss_bytes(proxy.pid);
        results.memory = Some(memory);
    }
    results.elapsed = started.elapsed();
    results.cpu = cpu_before
        .zip(cpu::Snapshot::take(&watched))
        .and_then(|(before, after)| before.usage_until(&after));
    proxy.stop().await;
    mock.stop().await;
    Ok(results)
}

/// One request to each side before measuring, so a broken setup fails fast with a clear message.
async fn smoke_test(targets: Targets, body: &bytes::Bytes) -> anyhow::Result<()> {
    for (name, addr) in [
        ("mock-upstream", targets.mock),
        ("kimi-proxy", targets.proxy),
    ] {
        let result = loadgen::run(Spec {
            addr,
            path: scenarios::PATH.into(),
            body: body.clone(),
            headers: Vec::new(),
            concurrency: 1,
            requests: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            streaming: false,
            stagger: Duration::ZERO,
        })
        .await?;
        if result.ok != 1 {
            bail!(
                "smoke test against {name} ({addr}) failed: {}",
                result.error_samples.join("; ")
            );
        }
    }
    Ok(())
}
