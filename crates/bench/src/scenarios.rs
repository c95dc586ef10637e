//! The scenarios: each one measured directly against the mock, through the proxy and through any peer gateways
//! in the same run, alternating sides round by round (direct, proxy, peers..., then the reverse) so drift hits
//! every side equally.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::body;
use crate::loadgen::{self, RunResult, Spec};
use crate::procs;

/// The chat completions route, the same on both sides.
pub const PATH: &str = "/v1/chat/completions";

/// Scenario names, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    Latency,
    Throughput,
    Streaming,
    StreamsConcurrency,
    Frontier,
    Memory,
    Dashboards,
    Cache,
    /// A Responses client vs a chat client through the proxy to the chat mock.
    Responses,
    /// An Anthropic Messages client through the proxy, native and translated, vs a chat client.
    Messages,
    /// The streams load repeated run after run, per build (`--candidate`); not in the defaults.
    MemoryRuns,
    /// Mixed traffic for `--soak-minutes`; not in the defaults.
    Soak,
    /// Throughput with the SQLite store vs the PostgreSQL store (`--pg`); not in the defaults.
    StoreBackends,
    /// Two instances on one PostgreSQL database vs one (`--pg`); not in the defaults.
    Instances,
}

impl Scenario {
    /// The scenarios of a run without `--scenarios`: all of them, but no frontier with `--quick`.
    pub fn defaults(quick: bool) -> Vec<Scenario> {
        let mut all = vec![
            Scenario::Latency,
            Scenario::Throughput,
            Scenario::Streaming,
            Scenario::StreamsConcurrency,
            Scenario::Frontier,
            Scenario::Memory,
            Scenario::Dashboards,
            Scenario::Cache,
            Scenario::Responses,
            Scenario::Messages,
        ];
        if quick {
            all.retain(|&s| s != Scenario::Frontier);
        }
        all
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Throughput => "throughput",
            Scenario::Streaming => "streaming",
            Scenario::StreamsConcurrency => "streams-concurrency",
            Scenario::Frontier => "frontier",
            Scenario::Memory => "memory",
            Scenario::Dashboards => "dashboards",
            Scenario::Cache => "cache",
            Scenario::Responses => "responses",
            Scenario::Messages => "messages",
            Scenario::MemoryRuns => "memory-runs",
            Scenario::Soak => "soak",
            Scenario::StoreBackends => "store-backends",
            Scenario::Instances => "instances",
        }
    }
}

/// Proxy modes (`--modes`): `on` is the default config, `off` switches token accounting and the store off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    On,
    Off,
}

/// Every parameter of a run; printed in the report.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The arguments the bench was run with, for the report's rerun line.
    pub args: String,
    pub quick: bool,
    pub scenarios: Vec<Scenario>,
    /// Load generator worker threads.
    pub threads: usize,
    /// Threads reading the dashboards' sockets (dashboards scenario).
    pub dashboard_threads: usize,
    /// Rounds per side for latency, throughput and streaming.
    pub rounds: usize,
    /// Warm-up before each measured round (latency and throughput; streaming warms up with one stream per VU).
    pub warmup: Duration,
    pub body_bytes: usize,
    /// Measured requests per side (all rounds together).
    pub latency_requests: u64,
    pub throughput_concurrency: usize,
    /// Measured time per side (all rounds together).
    pub throughput_duration: Duration,
    pub streaming_concurrency: usize,
    /// Measured streams per side (all rounds together).
    pub streaming_requests: u64,
    pub chunks: u32,
    pub chunk_delay_ms: u32,
    /// Stream counts of the streams-concurrency scenario.
    pub streams: Vec<usize>,
    /// Concurrency steps of the frontier scenario.
    pub frontier_steps: Vec<usize>,
    /// Measured time per side and step of the frontier scenario.
    pub frontier_step: Duration,
    /// Peer gateways measured beside the proxy (`--peers`).
    pub peers: Vec<crate::peers::Peer>,
    /// `--modes` holds `off`: a second proxy, accounting and store off, is one more side of latency and
    /// throughput.
    pub off: bool,
    /// Measured non-streaming requests per side and concurrency of the cache scenario.
    pub cache_requests: u64,
    /// Its moderate concurrency (the other one is 1).
    pub cache_concurrency: usize,
    /// Measured streams per side of the cache scenario.
    pub cache_stream_requests: u64,
    /// Pause before each RSS reading of the memory-runs scenario.
    pub memory_settle: Duration,
    /// The PostgreSQL server of the store-backends and instances scenarios (`--pg`, no database in it).
    pub pg: String,
    /// Redis for the instances scenario's shared budgets (`--redis`); none: each instance's budgets alone.
    pub redis: Option<String>,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        Settings {
            args: String::new(),
            quick,
            scenarios: Scenario::defaults(quick),
            threads: 1,
            dashboard_threads: 2,
            rounds: 3,
            warmup: Duration::from_millis(if quick { 300 } else { 500 }),
            body_bytes: body::chat_body(false).len(),
            latency_requests: if quick { 1_000 } else { 5_000 },
            throughput_concurrency: 50,
            throughput_duration: Duration::from_secs(if quick { 3 } else { 10 }),
            streaming_concurrency: 10,
            streaming_requests: if quick { 30 } else { 150 },
            chunks: 64,
            chunk_delay_ms: 20,
            streams: if quick { vec![100] } else { vec![100, 1_000] },
            frontier_steps: vec![1, 2, 4, 8, 16, 32, 64],
            frontier_step: Duration::from_secs(2),
            peers: Vec::new(),
            off: false,
            cache_requests: if quick { 2_000 } else { 10_000 },
            cache_concurrency: 8,
            cache_stream_requests: if quick { 1_000 } else { 5_000 },
            memory_settle: Duration::from_secs(5),
            pg: crate::fleet::DEFAULT_PG.into(),
            redis: None,
        }
    }

    pub fn has(&self, scenario: Scenario) -> bool {
        self.scenarios.contains(&scenario)
    }

    /// Round `round`'s share of `total`: the rounds add up to exactly `total`.
    pub(crate) fn per_round(&self, total: u64, round: usize) -> u64 {
        let rounds = u64::try_from(self.rounds.max(1)).unwrap_or(1);
        let round = u64::try_from(round).unwrap_or(0);
        total / rounds + u64::from(round < total % rounds)
    }

    pub fn stream_headers(&self) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
        Ok(vec![
            (
                HeaderName::from_static("x-mock-chunks"),
                HeaderValue::from_str(&self.chunks.to_string())?,
            ),
            (
                HeaderName::from_static("x-mock-chunk-delay-ms"),
                HeaderValue::from_str(&self.chunk_delay_ms.to_string())?,
            ),
        ])
    }

    /// Nominal length of one stream.
    fn stream_length(&self) -> Duration {
        Duration::from_millis(u64::from(self.chunks + 1) * u64::from(self.chunk_delay_ms))
    }
}

/// One scenario's figures for every side.
#[derive(Clone, Debug)]
pub struct Pair {
    pub direct: RunResult,
    pub proxy: RunResult,
    /// The proxy with token accounting and the store switched off (`--modes on,off`; latency and
    /// throughput only).
    pub off: Option<RunResult>,
    /// One per measured peer, in the order of [`Targets::peers`].
    pub peers: Vec<RunResult>,
}

/// One stream count of the streams-concurrency scenario.
#[derive(Clone, Debug)]
pub struct StreamsRun {
    pub streams: usize,
    pub pair: Pair,
    /// Peak proxy RSS sampled while the proxy side ran.
    pub proxy_peak_rss: Option<u64>,
    /// Peak RSS of each peer (its whole process tree) while its side ran.
    pub peer_peak_rss: Vec<Option<u64>>,
}

/// A gateway's RSS at the moments the report names.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub idle: Option<u64>,
    pub after_load: Option<u64>,
    /// `VmHWM`: the highest RSS over the proxy's whole life.
    pub high_water: Option<u64>,
}

/// Everything measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub latency: Option<Pair>,
    pub throughput: Option<Pair>,
    pub streaming: Option<Pair>,
    pub streams: Vec<StreamsRun>,
    /// The frontier scenario's steps.
    pub frontier: Vec<FrontierStep>,
    pub memory: Option<Memory>,
    pub memory_runs: Vec<crate::endurance::MemoryRuns>,
    pub soak: Option<crate::endurance::Soak>,
    /// From the servers' start to the end of the last scenario.
    pub elapsed: Duration,
    /// CPU use over that time.
    pub cpu: Option<crate::cpu::Usage>,
    /// Names of the measured peers: the columns after the proxy, in the order of `Pair::peers`.
    pub peers: Vec<String>,
    /// Every peer asked for, measured or not: how it was installed, configured and started.
    pub peer_reports: Vec<crate::peers::PeerReport>,
    /// Memory of each measured peer (its whole process tree).
    pub peer_memory: Vec<Memory>,
    /// The dashboards scenario's phases.
    pub dashboards: Vec<crate::dashboards::Phase>,
    /// The cache scenario.
    pub cache: Option<crate::cache::CacheResults>,
    /// The responses scenario.
    pub responses: Option<crate::responses::ResponsesResults>,
    /// The messages scenario.
    pub messages: Option<crate::messages::MessagesResults>,
    /// The store-backends scenario.
    pub store_backends: Option<crate::fleet::StoreBackends>,
    /// The instances scenario.
    pub instances: Option<crate::fleet::Instances>,
}

/// One endpoint under test: where it listens, its process, and the headers every request to it carries.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    pub addr: SocketAddr,
    pub pid: u32,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Endpoint {
    pub fn new(name: &str, addr: SocketAddr, pid: u32) -> Endpoint {
        Endpoint {
            name: name.into(),
            addr,
            pid,
            headers: Vec::new(),
        }
    }

    /// `spec` aimed at this endpoint, with its headers added.
    pub fn aim(&self, mut spec: Spec) -> Spec {
        spec.addr = self.addr;
        spec.headers.extend(self.headers.iter().cloned());
        spec
    }
}

/// The endpoints under test: the mock (direct), the proxy, and the peers.
#[derive(Clone, Debug)]
pub struct Targets {
    pub direct: Endpoint,
    pub proxy: Endpoint,
    /// The second proxy, accounting and store off (`--modes on,off`).
    pub off: Option<Endpoint>,
    pub peers: Vec<Endpoint>,
}

impl Targets {
    /// Every side, in the order of a forward round: direct, proxy, proxy-off (if `with_off`), peers.
    fn sides(&self, with_off: bool) -> Vec<&Endpoint> {
        let mut sides = vec![&self.direct, &self.proxy];
        if with_off {
            sides.extend(self.off.iter());
        }
        sides.extend(self.peers.iter());
        sides
    }
}

/// The order of the sides in `round`: forward in even rounds, reversed in odd ones (ABBA for two sides).
pub(crate) fn round_order(sides: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sides).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// Splits per-side results (direct, proxy, proxy-off if `has_off`, peers...) into a [`Pair`].
fn into_pair(results: Vec<RunResult>, has_off: bool) -> anyhow::Result<Pair> {
    let mut results = results.into_iter();
    let direct = results.next().context("no direct result")?;
    let proxy = results.next().context("no proxy result")?;
    let off = if has_off {
        Some(results.next().context("no proxy-off result")?)
    } else {
        None
    };
    Ok(Pair {
        direct,
        proxy,
        off,
        peers: results.collect(),
    })
}

/// Runs `make_spec` for `rounds` rounds per side, alternating the order of the sides (ABBA), and merges each
/// side. `warm`, if given, is run (and discarded, except for its error count) right before each measured run.
async fn alternate(
    label: &str,
    targets: &Targets,
    rounds: usize,
    with_off: bool,
    warm: Option<&dyn Fn(SocketAddr) -> Spec>,
    make_spec: impl Fn(SocketAddr, usize) -> Spec,
) -> anyhow::Result<Pair> {
    let has_off = with_off && targets.off.is_some();
    let sides = targets.sides(has_off);
    let mut merged = Vec::with_capacity(sides.len());
    for _ in &sides {
        merged.push(RunResult::empty()?);
    }
    for round in 0..rounds.max(1) {
        for index in round_order(sides.len(), round) {
            let (Some(side), Some(total)) = (sides.get(index), merged.get_mut(index)) else {
                continue;
            };
            let warm_errors = match warm {
                Some(warm) => {
                    let warmed = loadgen::run(side.aim(warm(side.addr))).await?;
                    warmed.errors + warmed.warmup_errors
                }
                None => 0,
            };
            let at = (label, round, rounds, side.name.as_str());
            let spec = make_spec(side.addr, round);
            let mut result = measure(at, &[*side], targets.direct.pid, spec).await?;
            result.warmup_errors += warm_errors;
            total.merge(&result)?;
        }
    }
    into_pair(merged, has_off)
}

/// `n` VUs spread over `parts` servers as evenly as they go: the first ones get one more.
pub(crate) fn spread(n: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| n / parts + usize::from(i < n % parts))
        .collect()
}

/// One measured run of `spec` (its progress line labelled by `(label, round, rounds, side)`), its VUs and
/// requests spread over `servers` running at the same time, with the CPU ticks the servers and the mock spent.
/// The result's rate is the servers' aggregate ([`RunResult::merge_concurrent`]).
pub(crate) async fn measure(
    (label, round, rounds, side): (&str, usize, usize, &str),
    servers: &[&Endpoint],
    mock: u32,
    spec: Spec,
) -> anyhow::Result<RunResult> {
    let ticks = |pid| crate::cpu::process_ticks(pid).unwrap_or(0);
    let server_ticks = || servers.iter().map(|s| ticks(s.pid)).sum::<u64>();
    let (server_before, mock_before) = (server_ticks(), ticks(mock));
    let shares = spread(spec.concurrency, servers.len());
    let requests = spread(
        usize::try_from(spec.requests).unwrap_or(usize::MAX),
        servers.len(),
    );
    let runs = servers
        .iter()
        .zip(shares.into_iter().zip(requests))
        .filter(|(_, (vus, _))| *vus > 0)
        .map(|(server, (vus, requests))| {
            let mut spec = spec.clone();
            spec.concurrency = vus;
            spec.requests = u64::try_from(requests).unwrap_or(u64::MAX);
            loadgen::run(server.aim(spec))
        });
    let mut result = RunResult::empty()?;
    for run in futures_util::future::join_all(runs).await {
        result.merge_concurrent(&run?)?;
    }
    result.server_ticks = server_ticks().saturating_sub(server_before);
    result.mock_ticks = ticks(mock).saturating_sub(mock_before);
    progress(label, round, rounds, side, &result);
    Ok(result)
}

fn progress(label: &str, round: usize, rounds: usize, side: &str, result: &RunResult) {
    let latency = loadgen::Summary::of(&result.latency);
    let mut line = format!(
        "kimi-bench: {label} round {}/{} {:<7} ok={} errors={} {:.0} req/s latency p50={}µs p99={}µs",
        round + 1,
        rounds.max(1),
        side,
        result.ok,
        result.errors,
        result.rps(),
        latency.p50,
        latency.p99,
    );
    if !result.ttft.is_empty() {
        let ttft = loadgen::Summary::of(&result.ttft);
        let gaps = loadgen::Summary::of(&result.gaps);
        line.push_str(&format!(
            " ttft p99={}µs gap p99={}µs gap max={}µs",
            ttft.p99, gaps.p99, gaps.max
        ));
    }
    if let Some(sample) = result.error_samples.first() {
        line.push_str(&format!(" first error: {sample}"));
    }
    eprintln!("{line}");
}

pub async fn latency(settings: &Settings, targets: &Targets, body: Bytes) -> anyhow::Result<Pair> {
    alternate(
        "latency",
        targets,
        settings.rounds,
        true,
        None,
        |addr, round| Spec {
            addr,
            path: PATH.into(),
            body: body.clone(),
            headers: Vec::new(),
            concurrency: 1,
            requests: settings.per_round(settings.latency_requests, round),
            warmup: settings.warmup,
            duration: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            streaming: false,
            stagger: Duration::ZERO,
            expect: None,
        },
    )
    .await
}

pub async fn throughput(
    settings: &Settings,
    targets: &Targets,
    body: Bytes,
) -> anyhow::Result<Pair> {
    alternate(
        "throughput",
        targets,
        settings.rounds,
        true,
        None,
        |addr, _| throughput_spec(settings, addr, &body),
    )
    .await
}

/// One round of the throughput scenario's load: the usual request at the throughput concurrency, after a
/// warm-up, for the round's share of the measured time.
pub(crate) fn throughput_spec(settings: &Settings, addr: SocketAddr, body: &Bytes) -> Spec {
    let rounds = u32::try_from(settings.rounds.max(1)).unwrap_or(1);
    Spec {
        addr,
        path: PATH.into(),
        body: body.clone(),
        headers: Vec::new(),
        concurrency: settings.throughput_concurrency,
        requests: 10_000_000,
        warmup: settings.warmup,
        duration: settings.throughput_duration / rounds,
        request_timeout: Duration::from_secs(10),
        streaming: false,
        stagger: Duration::ZERO,
        expect: None,
    }
}

pub async fn streaming(
    settings: &Settings,
    targets: &Targets,
    body: Bytes,
) -> anyhow::Result<Pair> {
    // Round 0 has the largest share; it sizes the time limit.
    let per_round = settings.per_round(settings.streaming_requests, 0);
    let headers = settings.stream_headers()?;
    let concurrency = settings.streaming_concurrency;
    let waves = u32::try_from(per_round.div_ceil(u64::try_from(concurrency.max(1)).unwrap_or(1)))
        .unwrap_or(u32::MAX);
    // Room for every wave (and the stagger) at three times the nominal stream length.
    let duration = settings.stream_length() * waves.saturating_add(1) * 3 + Duration::from_secs(5);
    // Warm-up: two short unpaced streams per VU (fills the proxy's upstream pool, wakes both servers).
    let warm = |addr| Spec {
        addr,
        path: PATH.into(),
        body: body.clone(),
        headers: vec![(
            HeaderName::from_static("x-mock-chunks"),
            HeaderValue::from_static("2"),
        )],
        concurrency,
        requests: 2 * u64::try_from(concurrency).unwrap_or(1),
        warmup: Duration::ZERO,
        duration: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        streaming: true,
        stagger: Duration::ZERO,
        expect: None,
    };
    alternate(
        "streaming",
        targets,
        settings.rounds,
        false,
        Some(&warm),
        |addr, round| {
            Spec {
                addr,
                path: PATH.into(),
                body: body.clone(),
                headers: headers.clone(),
                concurrency,
                requests: settings.per_round(settings.streaming_requests, round),
                warmup: Duration::ZERO,
                duration,
                request_timeout: settings.stream_length() * 5 + Duration::from_secs(5),
                streaming: true,
                // Spread the first streams over one stream length so the VUs don't run in lockstep waves.
                stagger: settings.stream_length(),
                expect: None,
            }
        },
    )
    .await
}

/// N streams started together, one round per side (direct first, then the proxy, then each peer); samples the
/// RSS of the gateway under load on its side.
pub async fn streams_concurrency(
    settings: &Settings,
    targets: &Targets,
    body: Bytes,
) -> anyhow::Result<Vec<StreamsRun>> {
    let headers = settings.stream_headers()?;
    let mut runs = Vec::new();
    for &streams in &settings.streams {
        let spec = |endpoint: &Endpoint| {
            endpoint.aim(Spec {
                addr: endpoint.addr,
                path: PATH.into(),
                body: body.clone(),
                headers: headers.clone(),
                concurrency: streams,
                requests: u64::try_from(streams).unwrap_or(u64::MAX),
                warmup: Duration::ZERO,
                duration: Duration::from_secs(30),
                request_timeout: settings.stream_length() * 10 + Duration::from_secs(10),
                streaming: true,
                stagger: Duration::ZERO,
                expect: None,
            })
        };
        let label = format!("streams-concurrency x{streams}");
        let direct = loadgen::run(spec(&targets.direct)).await?;
        progress(&label, 0, 1, &targets.direct.name, &direct);
        let mut results = vec![direct];
        let mut peaks = Vec::new();
        for gateway in std::iter::once(&targets.proxy).chain(targets.peers.iter()) {
            // Let the previous side's connections close before measuring the next one.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let sampler = RssSampler::start(procs::process_tree(gateway.pid));
            let result = loadgen::run(spec(gateway)).await;
            peaks.push(sampler.stop().await);
            let result = result?;
            progress(&label, 0, 1, &gateway.name, &result);
            results.push(result);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut peaks = peaks.into_iter();
        runs.push(StreamsRun {
            streams,
            pair: into_pair(results, false)?,
            proxy_peak_rss: peaks.next().flatten(),
            peer_peak_rss: peaks.collect(),
        });
    }
    Ok(runs)
}

/// One concurrency step of the frontier scenario: direct and proxy at the same concurrency.
#[derive(Clone, Debug)]
pub struct FrontierStep {
    pub concurrency: usize,
    pub direct: RunResult,
    pub proxy: RunResult,
}

/// Throughput frontier: direct and the proxy at each concurrency of `settings.frontier_steps` (the two sides
/// alternating which goes first), `settings.frontier_step` each after a warm-up. Bounded: every run has a time
/// and a request limit; the ladder stops early once both sides are past 10 ms p99 or failing.
pub async fn frontier(
    settings: &Settings,
    targets: &Targets,
    body: Bytes,
) -> anyhow::Result<Vec<FrontierStep>> {
    let mut steps = Vec::new();
    for (index, &concurrency) in settings.frontier_steps.iter().enumerate() {
        let spec = |endpoint: &Endpoint| {
            endpoint.aim(Spec {
                addr: endpoint.addr,
                path: PATH.into(),
                body: body.clone(),
                headers: Vec::new(),
                concurrency,
                requests: 2_000_000,
                warmup: Duration::from_millis(300),
                duration: settings.frontier_step,
                request_timeout: Duration::from_secs(10),
                streaming: false,
                stagger: Duration::ZERO,
                expect: None,
            })
        };
        let label = format!("frontier c={concurrency}");
        let mut results = vec![RunResult::empty()?, RunResult::empty()?];
        let sides = [&targets.direct, &targets.proxy];
        for side in round_order(2, index) {
            let (Some(endpoint), Some(slot)) = (sides.get(side), results.get_mut(side)) else {
                continue;
            };
            let result = loadgen::run(spec(endpoint)).await?;
            progress(&label, 0, 1, &endpoint.name, &result);
            *slot = result;
        }
        let mut results = results.into_iter();
        let (Some(direct), Some(proxy)) = (results.next(), results.next()) else {
            break;
        };
        let saturated = |r: &RunResult| {
            r.errors > 0 || r.ok == 0 || loadgen::Summary::of(&r.latency).p99 > 10_000
        };
        let done = saturated(&direct) && saturated(&proxy);
        steps.push(FrontierStep {
            concurrency,
            direct,
            proxy,
        });
        if done {
            break;
        }
    }
    Ok(steps)
}

/// The best requests/s (and its concurrency) among `(concurrency, rps, p99 µs, errors)` steps whose p99 is
/// under `bound_us` with no error.
pub fn best_under(steps: &[(usize, f64, u64, u64)], bound_us: u64) -> Option<(usize, f64)> {
    steps
        .iter()
        .filter(|&&(_, rps, p99, errors)| errors == 0 && p99 < bound_us && rps > 0.0)
        .map(|&(c, rps, _, _)| (c, rps))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Samples the summed RSS of some processes every 10 ms in the background and keeps the peak.
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub(crate) fn start(pids: Vec<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let task = {
            let stop = Arc::clone(&stop);
            let peak = Arc::clone(&peak);
            tokio::spawn(async move {
                // Bounded: at most 10 minutes of samples even if never stopped.
                for _ in 0..60_000 {
                    if let Some(rss) = procs::rss_sum(&pids) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        RssSampler { stop, peak, task }
    }

    pub(crate) async fn stop(self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let peak = self.peak.load(Ordering::Relaxed);
        (peak > 0).then_some(peak)
    }
}

/// One round of one side of a client-API scenario (messages, responses): `latency_requests` for the round at
/// concurrency 1, then the throughput concurrency for `per_round`, each merged into its side's result.
pub async fn latency_then_throughput(
    scenario: &str,
    side: &str,
    settings: &Settings,
    round: usize,
    per_round: Duration,
    spec: impl Fn(usize, u64, Duration) -> crate::loadgen::Spec,
    (latency, throughput): (&mut RunResult, &mut RunResult),
) -> anyhow::Result<()> {
    let requests = settings.per_round(settings.latency_requests, round);
    let result = crate::loadgen::run(spec(1, requests, Duration::from_secs(60))).await?;
    side_progress(scenario, "c=1", side, &result);
    latency.merge(&result)?;
    let result =
        crate::loadgen::run(spec(settings.throughput_concurrency, 10_000_000, per_round)).await?;
    let label = format!("c={}", settings.throughput_concurrency);
    side_progress(scenario, &label, side, &result);
    throughput.merge(&result)
}

fn side_progress(scenario: &str, label: &str, side: &str, result: &RunResult) {
    let latency = crate::loadgen::Summary::of(&result.latency);
    eprintln!(
        "kimi-bench: {scenario} {label} {side:<10} ok={} errors={} {:.0} req/s p50={}µs p99={}µs{}",
        result.ok,
        result.errors,
        result.rps(),
        latency.p50,
        latency.p99,
        result
            .error_samples
            .first()
            .map_or(String::new(), |e| format!(" first error: {e}"))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_split_totals_exactly() {
        let settings = Settings::new(true);
        let shares: Vec<u64> = (0..3).map(|r| settings.per_round(1_000, r)).collect();
        assert_eq!(shares, vec![334, 333, 333]);
        assert_eq!(settings.per_round(30, 2), 10);
        assert_eq!(settings.stream_length(), Duration::from_millis(1_300));
    }

    #[test]
    fn frontier_picks_the_best_rate_under_each_bound() {
        let steps = [
            (1, 2_000.0, 600, 0),
            (4, 6_000.0, 900, 0),
            (16, 9_000.0, 4_000, 0),
            (32, 9_500.0, 8_000, 2),
            (64, 9_400.0, 12_000, 0),
        ];
        assert_eq!(best_under(&steps, 1_000), Some((4, 6_000.0)));
        assert_eq!(best_under(&steps, 5_000), Some((16, 9_000.0)));
        assert_eq!(best_under(&steps, 10_000), Some((16, 9_000.0)));
        assert_eq!(best_under(&steps, 500), None);
        assert!(!Scenario::defaults(true).contains(&Scenario::Frontier));
        assert!(Scenario::defaults(false).contains(&Scenario::Frontier));
    }

    #[test]
    fn load_spreads_evenly_over_instances() {
        assert_eq!(spread(50, 2), vec![25, 25]);
        assert_eq!(spread(51, 2), vec![26, 25]);
        assert_eq!(spread(50, 1), vec![50]);
        assert_eq!(spread(1, 3), vec![1, 0, 0]);
        assert_eq!(spread(7, 0), vec![7]);
        let spec = throughput_spec(
            &Settings::new(true),
            SocketAddr::from(([127, 0, 0, 1], 9)),
            &Bytes::new(),
        );
        assert_eq!(spec.concurrency, 50);
        assert_eq!(spec.duration, Duration::from_secs(1));
    }

    #[test]
    fn rounds_alternate_the_order_of_all_sides() {
        assert_eq!(round_order(2, 0), vec![0, 1]);
        assert_eq!(round_order(2, 1), vec![1, 0]);
        assert_eq!(round_order(4, 2), vec![0, 1, 2, 3]);
        assert_eq!(round_order(4, 3), vec![3, 2, 1, 0]);
    }

    #[test]
    fn endpoints_add_their_headers() {
        let mut peer = Endpoint::new("peer", SocketAddr::from(([127, 0, 0, 1], 9)), 1);
        peer.headers.push((
            HeaderName::from_static("x-portkey-provider"),
            HeaderValue::from_static("openai"),
        ));
        let spec = peer.aim(Spec {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            path: PATH.into(),
            body: Bytes::new(),
            headers: vec![(
                HeaderName::from_static("x-mock-chunks"),
                HeaderValue::from_static("4"),
            )],
            concurrency: 1,
            requests: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            streaming: false,
            stagger: Duration::ZERO,
            expect: None,
        });
        assert_eq!(spec.addr, peer.addr);
        assert_eq!(spec.headers.len(), 2);
    }
}
