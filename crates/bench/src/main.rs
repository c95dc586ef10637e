//! `kimi-bench`: a benchmark anyone can rerun, kimi-proxy vs direct upstream.
//!
//! Builds `kimi-proxy` and `mock-upstream` in release, starts both on loopback, drives them with the
//! in-crate load generator (direct to the mock and through the proxy, alternating), and writes a markdown
//! report (default `bench-results/report.md`, also printed on stdout). Progress goes to stderr. With
//! `--peers litellm,portkey` the same scenarios also run through peer gateways pointed at the same mock.

mod body;
mod cache;
mod cpu;
mod dashboards;
mod endurance;
mod fleet;
mod loadgen;
mod messages;
mod peers;
mod procs;
mod report;
mod responses;
mod scenarios;
mod sysinfo;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::loadgen::Spec;
use crate::peers::{Peer, PeerServer};
use crate::procs::Server;
use crate::scenarios::{Endpoint, Memory, Results, Scenario, Settings, Targets};

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
    /// Scenarios to run, comma-separated: latency, throughput, streaming, streams-concurrency, frontier,
    /// memory, dashboards, cache, responses, messages (default: all; --quick: all but frontier); not in the
    /// default: memory-runs, soak, store-backends, instances.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Option<Vec<Scenario>>,
    /// Worker threads of the load generator's runtime (the servers need the other cores).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Threads of the dashboards scenario's WebSocket readers (a runtime of their own; one thread reads the 100
    /// sockets one after another and measures its own queue).
    #[arg(long, default_value_t = 2)]
    dashboard_threads: usize,
    /// Rounds per side for latency, throughput and streaming (default 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// Stream counts for streams-concurrency, comma-separated (default 100,1000; --quick: 100).
    #[arg(long, value_delimiter = ',')]
    streams: Option<Vec<usize>>,
    /// Don't run `cargo build`; use the binaries already in target/release.
    #[arg(long)]
    skip_build: bool,
    /// Proxy modes to measure, comma-separated: `on` (token accounting and store, the default config) and
    /// `off` (a second kimi-proxy with `[server] token_accounting = false` and `[store] enabled = false`,
    /// measured as one more side of latency and throughput).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "on")]
    modes: Vec<scenarios::Mode>,
    /// Peer gateways to measure beside kimi-proxy, comma-separated (installed on first use under --peers-dir).
    #[arg(long, value_enum, value_delimiter = ',')]
    peers: Vec<Peer>,
    /// Where the peers are installed (default: `peers/` beside the report).
    #[arg(long)]
    peers_dir: Option<PathBuf>,
    /// LiteLLM version to install from PyPI (`litellm[proxy]==VERSION`).
    #[arg(long, default_value = peers::LITELLM_VERSION)]
    litellm_version: String,
    /// Runs of the memory-runs scenario (each: the largest `--streams` count at once, then a pause).
    #[arg(long, default_value_t = 5)]
    memory_runs: usize,
    /// Seconds to wait after each memory run before reading the RSS.
    #[arg(long, default_value_t = 5)]
    memory_settle_secs: u64,
    /// Extra kimi-proxy builds for memory-runs, `LABEL=PATH` (repeatable; an empty PATH is this workspace's
    /// release build), measured beside that build (`default`).
    #[arg(long)]
    candidate: Vec<String>,
    /// Environment for one memory-runs build, `LABEL:VAR=VALUE` (repeatable), e.g.
    /// `default:MIMALLOC_PURGE_DELAY=0`.
    #[arg(long)]
    candidate_env: Vec<String>,
    /// Length of the soak scenario.
    #[arg(long, default_value_t = 20)]
    soak_minutes: u64,
    /// The PostgreSQL server of store-backends and instances (`postgres://USER@HOST:PORT`, no database): each
    /// creates a throwaway database on it with `psql` and drops it afterwards.
    #[arg(long, default_value = fleet::DEFAULT_PG)]
    pg: String,
    /// Redis for the instances scenario (`redis://HOST:PORT`): both instances then share the mock provider's
    /// `requests_per_minute` budget on it (`[cluster] redis`, a budget nothing reaches, local allowance 100).
    #[arg(long)]
    redis: Option<String>,
    /// `@portkey-ai/gateway` version to install from npm.
    #[arg(long, default_value = peers::PORTKEY_VERSION)]
    portkey_version: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut settings = Settings::new(args.quick);
    settings.args = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    settings.scenarios = args
        .scenarios
        .clone()
        .unwrap_or_else(|| Scenario::defaults(args.quick));
    settings.scenarios.sort();
    settings.scenarios.dedup();
    settings.threads = args.threads.max(1);
    settings.dashboard_threads = args.dashboard_threads.max(1);
    if let Some(rounds) = args.rounds {
        settings.rounds = rounds.clamp(1, 100);
    }
    if let Some(streams) = &args.streams {
        settings.streams = streams.iter().copied().filter(|&n| n > 0).collect();
    }
    settings.off = args.modes.contains(&scenarios::Mode::Off);
    settings.memory_settle = Duration::from_secs(args.memory_settle_secs);
    settings.peers = args.peers.clone();
    settings.pg = args.pg.clone();
    settings.redis = args.redis.clone();
    settings.peers.sort();
    settings.peers.dedup();
    if settings.has(Scenario::StreamsConcurrency) || settings.has(Scenario::MemoryRuns) {
        let most = settings.streams.iter().copied().max().unwrap_or(0);
        // A gateway holds two sockets per stream (client and upstream); keep headroom for everything else.
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
    let peer_setup = PeerSetup {
        dir: args.peers_dir.clone().unwrap_or_else(|| {
            args.out
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join("peers")
        }),
        versions: peers::Versions {
            litellm: args.litellm_version.clone(),
            portkey: args.portkey_version.clone(),
        },
    };
    let results = runtime.block_on(async {
        tokio::select! {
            results = run(&settings, &binaries, &args, &peer_setup) => results,
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

/// The memory-runs builds: `default` (this workspace's release build), then each `--candidate`, with their
/// `--candidate-env`.
fn endurance_candidates(
    default: &Path,
    specs: &[String],
    envs: &[String],
) -> anyhow::Result<Vec<endurance::Candidate>> {
    let mut candidates = vec![endurance::Candidate {
        label: "default".into(),
        bin: default.to_path_buf(),
        env: Vec::new(),
    }];
    for text in specs {
        let Some((label, path)) = text.split_once('=') else {
            bail!("--candidate wants LABEL=PATH, got `{text}`");
        };
        if label.is_empty() || candidates.iter().any(|c| c.label == label) {
            bail!("--candidate `{text}`: the label is empty or already used");
        }
        let bin = if path.is_empty() {
            default.to_path_buf()
        } else {
            PathBuf::from(path)
        };
        if !bin.is_file() {
            bail!("--candidate `{text}`: {} is not a file", bin.display());
        }
        candidates.push(endurance::Candidate {
            label: label.into(),
            bin,
            env: Vec::new(),
        });
    }
    for text in envs {
        let parsed = text
            .split_once(':')
            .and_then(|(label, var)| var.split_once('=').map(|(k, v)| (label, k, v)));
        let Some((label, key, value)) = parsed.filter(|(_, key, _)| !key.is_empty()) else {
            bail!("--candidate-env wants LABEL:VAR=VALUE, got `{text}`");
        };
        let Some(candidate) = candidates.iter_mut().find(|c| c.label == label) else {
            bail!("--candidate-env `{text}`: no candidate labelled `{label}`");
        };
        candidate.env.push((key.into(), value.into()));
    }
    Ok(candidates)
}

/// Where and which peers to install.
struct PeerSetup {
    dir: PathBuf,
    versions: peers::Versions,
}

async fn run(
    settings: &Settings,
    binaries: &procs::Binaries,
    args: &Args,
    peer_setup: &PeerSetup,
) -> anyhow::Result<Results> {
    let out = args.out.as_path();
    let scratch = ScratchDir::new()?;
    let log_dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;

    // Install the peers first (minutes the first time), so nothing is measured meanwhile.
    let mut prepared = Vec::new();
    let work = if settings.peers.is_empty() {
        None
    } else {
        Some(peers::WorkDir::create(&peer_setup.dir)?)
    };
    if let Some(work) = &work {
        for &peer in &settings.peers {
            prepared.push(peers::prepare(peer, work, &peer_setup.versions).await);
        }
    }

    let mut mock = Server::start(
        "mock-upstream",
        &binaries.mock,
        &["--listen", "127.0.0.1:0"],
        &log_dir.join("mock-upstream.log"),
        "mock-upstream listening on",
    )
    .await?;
    let config_path = scratch.0.join("kimi-proxy.toml");
    std::fs::write(&config_path, procs::proxy_config(mock.addr, true))
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config_arg = config_path.to_string_lossy().into_owned();
    let data_arg = scratch.0.join("data").to_string_lossy().into_owned();
    let mut proxy = Server::start(
        "kimi-proxy",
        &binaries.proxy,
        &procs::proxy_args(&config_arg, &data_arg),
        &log_dir.join("kimi-proxy.log"),
        "kimi-proxy listening on",
    )
    .await?;
    eprintln!(
        "kimi-bench: mock-upstream on {} (pid {}), kimi-proxy on {} (pid {})",
        mock.addr, mock.pid, proxy.addr, proxy.pid
    );
    // `--modes on,off`: a second proxy with token accounting and the store switched off.
    let mut proxy_off = if settings.off {
        let server = procs::start_proxy(
            "kimi-proxy (accounting and store off)",
            &binaries.proxy,
            (&scratch.0, log_dir, "kimi-proxy-off"),
            &procs::proxy_config(mock.addr, false),
            &[],
        )
        .await?;
        Some(server)
    } else {
        None
    };
    let mut targets = Targets {
        direct: Endpoint::new("direct", mock.addr, mock.pid),
        proxy: Endpoint::new("proxy", proxy.addr, proxy.pid),
        off: proxy_off
            .as_ref()
            .map(|s| Endpoint::new("proxy-off", s.addr, s.pid)),
        peers: Vec::new(),
    };
    let plain = body::chat_body(false);
    let streamed = body::chat_body(true);
    // Idle RSS right after start, before any request (the first one loads what the proxy loads lazily).
    let mut memory = Memory::default();
    if settings.has(Scenario::Memory) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        memory.idle = procs::rss_bytes(proxy.pid);
    }
    smoke_test(&targets, &plain).await?;

    // Start the peers against the same mock; one that fails to start or to answer is reported and left out.
    let mut results = Results::default();
    let mut servers: Vec<PeerServer> = Vec::new();
    let mut peer_memory: Vec<Memory> = Vec::new();
    if let Some(work) = &work {
        for mut peer in prepared {
            if let Some(server) = peers::start(&mut peer, mock.addr, work, log_dir).await {
                let mut idle = Memory::default();
                if settings.has(Scenario::Memory) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    idle.idle = procs::rss_sum(&server.pids());
                }
                match peer_smoke_test(&server, &plain, settings).await {
                    Ok(notes) => {
                        peer.report.notes.extend(notes);
                        servers.push(server);
                        peer_memory.push(idle);
                    }
                    Err(err) => {
                        let message = format!("started, but failed the smoke test: {err:#}");
                        eprintln!("kimi-bench: peer {} {message}", server.peer.name());
                        peer.report.failure = Some(message);
                        server.stop().await;
                    }
                }
            }
            results.peer_reports.push(peer.report);
        }
    }
    for server in &servers {
        targets.peers.push(Endpoint {
            name: server.peer.name().into(),
            addr: server.addr,
            pid: server.pid,
            headers: server.headers.clone(),
        });
        results.peers.push(server.peer.name().into());
    }

    let started = std::time::Instant::now();
    let mut watched = vec![std::process::id(), mock.pid, proxy.pid];
    watched.extend(proxy_off.as_ref().map(|s| s.pid));
    for server in &servers {
        watched.extend(server.pids());
    }
    let cpu_before = cpu::Snapshot::take(&watched);

    for scenario in &settings.scenarios {
        let scenario_start = std::time::Instant::now();
        match scenario {
            Scenario::Latency => {
                results.latency =
                    Some(scenarios::latency(settings, &targets, plain.clone()).await?);
            }
            Scenario::Throughput => {
                results.throughput =
                    Some(scenarios::throughput(settings, &targets, plain.clone()).await?);
            }
            Scenario::Streaming => {
                results.streaming =
                    Some(scenarios::streaming(settings, &targets, streamed.clone()).await?);
            }
            Scenario::StreamsConcurrency => {
                results.streams =
                    scenarios::streams_concurrency(settings, &targets, streamed.clone()).await?;
            }
            Scenario::Frontier => {
                results.frontier = scenarios::frontier(settings, &targets, plain.clone()).await?;
            }
            Scenario::Memory => {}
            Scenario::Dashboards => {
                results.dashboards = dashboards::run(settings, &targets, streamed.clone()).await?;
            }
            Scenario::Cache => {
                results.cache = Some(
                    cache_scenario(settings, binaries, &targets, mock.addr, &scratch.0, log_dir)
                        .await?,
                );
            }
            Scenario::Responses => {
                results.responses = Some(responses::run(settings, &targets).await?);
            }
            Scenario::Messages => {
                results.messages = Some(messages::run(settings, &targets).await?);
            }
            Scenario::MemoryRuns => {
                let candidates =
                    endurance_candidates(&binaries.proxy, &args.candidate, &args.candidate_env)?;
                results.memory_runs = endurance::memory_runs(
                    settings,
                    &candidates,
                    mock.addr,
                    &scratch.0,
                    log_dir,
                    streamed.clone(),
                    plain.clone(),
                    args.memory_runs.max(1),
                    Duration::from_secs(args.memory_settle_secs),
                )
                .await?;
            }
            Scenario::StoreBackends | Scenario::Instances => {
                let setup = fleet::Setup {
                    binaries,
                    mock: &targets.direct,
                    scratch: &scratch.0,
                    log_dir,
                };
                if *scenario == Scenario::StoreBackends {
                    results.store_backends =
                        Some(fleet::store_backends(settings, &setup, &plain).await?);
                } else {
                    results.instances = Some(fleet::instances(settings, &setup, &plain).await?);
                }
            }
            Scenario::Soak => {
                results.soak = Some(
                    endurance::soak(
                        settings,
                        &targets.proxy,
                        streamed.clone(),
                        plain.clone(),
                        args.soak_minutes.max(1),
                    )
                    .await?,
                );
            }
        }
        mock.check_alive()?;
        proxy.check_alive()?;
        if let Some(off) = &mut proxy_off {
            off.check_alive()?;
        }
        // A peer that dies is noted (its later sides fail fast and count as errors); the run goes on.
        for server in &mut servers {
            if let Err(err) = server.check_alive() {
                let first = format!("{err:#}");
                let first = first.lines().next().unwrap_or_default().to_owned();
                eprintln!("kimi-bench: {first}");
                if let Some(report) = results.peer_reports.iter_mut().find(|r| {
                    r.peer == server.peer && !r.notes.iter().any(|n| n.contains("exited"))
                }) {
                    report.notes.push(format!(
                        "**exited during the run** (noticed after the {} scenario: {first}); its later figures \
                         are errors, see its log beside the report",
                        scenario.name()
                    ));
                }
            }
        }
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
        for (server, memory) in servers.iter().zip(peer_memory.iter_mut()) {
            let pids = server.pids();
            memory.after_load = procs::rss_sum(&pids);
            memory.high_water = procs::peak_rss_sum(&pids);
        }
        results.peer_memory = peer_memory;
    }
    results.elapsed = started.elapsed();
    results.cpu = cpu_before
        .zip(cpu::Snapshot::take(&watched))
        .and_then(|(before, after)| before.usage_until(&after));
    for server in servers {
        server.stop().await;
    }
    if let Some(off) = proxy_off {
        off.stop().await;
    }
    proxy.stop().await;
    mock.stop().await;
    Ok(results)
}

/// Starts a proxy with the response cache on for the model, runs the cache scenario against it, stops it.
async fn cache_scenario(
    settings: &Settings,
    binaries: &procs::Binaries,
    targets: &Targets,
    mock: std::net::SocketAddr,
    scratch: &Path,
    log_dir: &Path,
) -> anyhow::Result<cache::CacheResults> {
    let mut server = procs::start_proxy(
        "kimi-proxy (response cache on)",
        &binaries.proxy,
        (scratch, log_dir, "kimi-proxy-cache"),
        &procs::cache_proxy_config(mock),
        &[],
    )
    .await?;
    let cached = Endpoint::new("cache hit", server.addr, server.pid);
    let forwarding = Endpoint::new("forwarded", targets.proxy.addr, targets.proxy.pid);
    let results = cache::run(settings, &targets.direct, &cached, &forwarding).await;
    server.check_alive()?;
    server.stop().await;
    results
}

/// One request (`requests` of them, one at a time) to `endpoint`; fails unless all succeed.
async fn probe(
    endpoint: &Endpoint,
    body: &bytes::Bytes,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    streaming: bool,
    requests: u64,
) -> anyhow::Result<loadgen::RunResult> {
    let result = loadgen::run(endpoint.aim(Spec {
        addr: endpoint.addr,
        path: scenarios::PATH.into(),
        body: body.clone(),
        headers,
        concurrency: 1,
        requests,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(30),
        request_timeout: Duration::from_secs(15),
        streaming,
        stagger: Duration::ZERO,
        expect: None,
    }))
    .await?;
    if result.ok != requests {
        bail!(
            "{} of {requests} requests to {} ({}) failed: {}",
            requests - result.ok,
            endpoint.name,
            endpoint.addr,
            result.error_samples.join("; ")
        );
    }
    Ok(result)
}

/// One request to each side before measuring, so a broken setup fails fast with a clear message.
async fn smoke_test(targets: &Targets, body: &bytes::Bytes) -> anyhow::Result<()> {
    for endpoint in [&targets.direct, &targets.proxy]
        .into_iter()
        .chain(targets.off.iter())
    {
        probe(endpoint, body, Vec::new(), false, 1)
            .await
            .with_context(|| format!("smoke test against {} failed", endpoint.name))?;
    }
    Ok(())
}

/// A peer's smoke test: a few plain requests and a paced stream. Returns notes for the report (e.g. when
/// the peer does not pass the `x-mock-*` headers on, which makes its streaming figures incomparable).
async fn peer_smoke_test(
    server: &PeerServer,
    plain: &bytes::Bytes,
    settings: &Settings,
) -> anyhow::Result<Vec<String>> {
    let endpoint = Endpoint {
        name: server.peer.name().into(),
        addr: server.addr,
        pid: server.pid,
        headers: server.headers.clone(),
    };
    probe(&endpoint, plain, Vec::new(), false, 3).await?;
    let (chunks, delay_ms) = (3u32, 150u64);
    let paced = vec![
        (
            http::HeaderName::from_static("x-mock-chunks"),
            http::HeaderValue::from(chunks),
        ),
        (
            http::HeaderName::from_static("x-mock-chunk-delay-ms"),
            http::HeaderValue::from(delay_ms),
        ),
    ];
    let streamed = body::chat_body(true);
    let result = probe(&endpoint, &streamed, paced, true, 1).await?;
    let took = loadgen::Summary::of(&result.latency).max;
    let mut notes = Vec::new();
    if took < u64::from(chunks) * delay_ms * 1_000 {
        notes.push(format!(
            "**The `x-mock-*` headers do not seem to reach the mock through {}**: a stream asked for {chunks} \
             chunks {delay_ms} ms apart took {:.0} ms, so its streaming figures are for the mock's default \
             stream shape, not {} chunks x {} ms.",
            endpoint.name,
            took as f64 / 1e3,
            settings.chunks,
            settings.chunk_delay_ms
        ));
    }
    Ok(notes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn candidates_and_their_environment() {
        let default = std::env::current_exe().unwrap();
        let exe = default.to_string_lossy().into_owned();
        let candidates = endurance_candidates(
            &default,
            &["purge=".into(), format!("other={exe}")],
            &[
                "purge:MIMALLOC_PURGE_DELAY=0".into(),
                "default:A=b=c".into(),
            ],
        )
        .unwrap();
        let labels: Vec<&str> = candidates.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["default", "purge", "other"]);
        assert_eq!(candidates[0].env, [("A".to_string(), "b=c".to_string())]);
        assert_eq!(candidates[1].bin, default);
        assert_eq!(
            candidates[1].env,
            [("MIMALLOC_PURGE_DELAY".to_string(), "0".to_string())]
        );
        assert!(endurance_candidates(&default, &["nolabel".into()], &[]).is_err());
        assert!(endurance_candidates(&default, &["x=/no/such/file".into()], &[]).is_err());
        assert!(endurance_candidates(&default, &["default=".into()], &[]).is_err());
        assert!(endurance_candidates(&default, &[], &["ghost:A=1".into()]).is_err());
        assert!(endurance_candidates(&default, &[], &["default:=1".into()]).is_err());
    }

    #[test]
    fn store_scenarios_are_asked_for_by_name_only() {
        let args = Args::try_parse_from([
            "kimi-bench",
            "--scenarios",
            "store-backends,instances",
            "--pg",
            "postgres://kimi@db:6432",
        ])
        .unwrap();
        assert_eq!(
            args.scenarios,
            Some(vec![Scenario::StoreBackends, Scenario::Instances])
        );
        assert_eq!(args.pg, "postgres://kimi@db:6432");
        assert_eq!(
            Args::try_parse_from(["kimi-bench"]).unwrap().pg,
            fleet::DEFAULT_PG
        );
        for quick in [false, true] {
            let defaults = Scenario::defaults(quick);
            assert!(!defaults.contains(&Scenario::StoreBackends));
            assert!(!defaults.contains(&Scenario::Instances));
        }
        assert_eq!(Scenario::StoreBackends.name(), "store-backends");
    }
}
