//! Memory over time: the many-streams load repeated run after run against one or more kimi-proxy builds
//! (`memory-runs`, e.g. to compare allocators side by side), and a bounded soak of mixed traffic with the RSS
//! sampled every few seconds (`soak`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::loadgen::{self, RunResult, Spec};
use crate::procs::{self, Server};
use crate::scenarios::{Endpoint, PATH, Settings};

/// How long memory-runs waits after the last run before its last reading: time-based release (a decay or
/// purge timer) shows here, or does not.
pub const LATE_READING: Duration = Duration::from_secs(30);

/// A kimi-proxy build under test (`--candidate LABEL=PATH`, `--candidate-env LABEL:VAR=VALUE`); this
/// workspace's release build is `default`.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub label: String,
    pub bin: PathBuf,
    /// Extra environment, e.g. allocator options (`MIMALLOC_PURGE_DELAY=0`).
    pub env: Vec<(String, String)>,
}

/// One candidate's memory, run after run, and its throughput.
#[derive(Clone, Debug)]
pub struct MemoryRuns {
    pub label: String,
    pub env: Vec<(String, String)>,
    /// Before any request.
    pub idle: Option<u64>,
    /// After one request (the tokenizer decoded, which stays): the floor "after load" can come back to.
    pub warm: Option<u64>,
    pub rounds: Vec<MemoryRound>,
    /// [`LATE_READING`] after the last run.
    pub late: Option<u64>,
    /// Non-streaming requests/s at concurrency 50 (same length for every candidate).
    pub requests_per_s: f64,
    pub errors: u64,
}

#[derive(Clone, Debug)]
pub struct MemoryRound {
    /// The highest RSS sampled while the streams were open.
    pub peak: Option<u64>,
    /// `settle` after the streams ended.
    pub after: Option<u64>,
}

/// Starts a fresh proxy per candidate (same config, same mock, accounting and store on), then repeats `runs`
/// times: `streams` streams at once (RSS peak sampled every 10 ms), a pause of `settle`, RSS. Candidates
/// alternate within each round (the order reversed every other round); throughput is measured last,
/// alternating too.
#[allow(clippy::too_many_arguments)]
pub async fn memory_runs(
    settings: &Settings,
    candidates: &[Candidate],
    mock: std::net::SocketAddr,
    scratch: &Path,
    log_dir: &Path,
    streamed: Bytes,
    plain: Bytes,
    runs: usize,
    settle: Duration,
) -> anyhow::Result<Vec<MemoryRuns>> {
    let mut servers = Vec::new();
    let mut results = Vec::new();
    for (i, candidate) in candidates.iter().enumerate() {
        let config = scratch.join(format!("memory-{i}.toml"));
        std::fs::write(&config, procs::proxy_config(mock, true))?;
        let config = config.to_string_lossy().into_owned();
        let data = scratch.join(format!("memory-data-{i}"));
        let data = data.to_string_lossy().into_owned();
        let server = Server::start_with_env(
            "kimi-proxy (memory runs)",
            &candidate.bin,
            &procs::proxy_args(&config, &data),
            &candidate.env,
            &log_dir.join(format!("kimi-proxy-memory-{}.log", candidate.label)),
            "kimi-proxy listening on",
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = procs::rss_bytes(server.pid);
        let endpoint = Endpoint::new(&candidate.label, server.addr, server.pid);
        let first = loadgen::run(spec(
            &endpoint,
            plain.clone(),
            1,
            1,
            Duration::from_secs(10),
            false,
        ))
        .await?;
        if first.ok != 1 {
            anyhow::bail!(
                "memory-runs: {} did not answer: {}",
                candidate.label,
                first.error_samples.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        results.push(MemoryRuns {
            label: candidate.label.clone(),
            env: candidate.env.clone(),
            idle,
            warm: procs::rss_bytes(server.pid),
            rounds: Vec::new(),
            late: None,
            requests_per_s: 0.0,
            errors: 0,
        });
        servers.push((server, endpoint));
    }
    let streams = settings.streams.iter().copied().max().unwrap_or(1_000);
    let headers = settings.stream_headers()?;
    for round in 0..runs {
        for i in alternate(servers.len(), round) {
            let (server, endpoint) = &servers[i];
            let mut stream_spec = spec(
                endpoint,
                streamed.clone(),
                streams,
                streams as u64,
                Duration::from_secs(60),
                true,
            );
            stream_spec.headers.extend(headers.iter().cloned());
            let sampler = crate::scenarios::RssSampler::start(vec![server.pid]);
            let result = loadgen::run(stream_spec).await;
            let peak = sampler.stop().await;
            let result = result?;
            tokio::time::sleep(settle).await;
            let after = procs::rss_bytes(server.pid);
            eprintln!(
                "kimi-bench: memory-runs run {}/{runs} {:<10} streams ok={} errors={} peak={} MiB after={} MiB",
                round + 1,
                endpoint.name,
                result.ok,
                result.errors,
                fmt(peak),
                fmt(after)
            );
            results[i].errors += result.errors;
            results[i].rounds.push(MemoryRound { peak, after });
        }
    }
    tokio::time::sleep(LATE_READING).await;
    for (i, (server, _)) in servers.iter().enumerate() {
        results[i].late = procs::rss_bytes(server.pid);
    }
    // Throughput, alternating candidates: 3 rounds of 2 s each.
    let mut totals: Vec<RunResult> = Vec::new();
    for _ in &servers {
        totals.push(RunResult::empty()?);
    }
    for round in 0..3 {
        for i in alternate(servers.len(), round) {
            let (_, endpoint) = &servers[i];
            let mut run_spec = spec(
                endpoint,
                plain.clone(),
                50,
                u64::MAX,
                Duration::from_secs(2),
                false,
            );
            run_spec.warmup = Duration::from_millis(300);
            let result = loadgen::run(run_spec).await?;
            totals[i].merge(&result)?;
        }
    }
    for (i, total) in totals.iter().enumerate() {
        results[i].requests_per_s = total.rps();
        results[i].errors += total.errors;
        eprintln!(
            "kimi-bench: memory-runs throughput {:<10} {:.0} req/s errors={}",
            results[i].label,
            total.rps(),
            total.errors
        );
    }
    for (mut server, _) in servers {
        server.check_alive()?;
        server.stop().await;
    }
    Ok(results)
}

/// `0..n`, reversed on odd rounds, so no candidate always goes first.
fn alternate(n: usize, round: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

fn spec(
    endpoint: &Endpoint,
    body: Bytes,
    concurrency: usize,
    requests: u64,
    duration: Duration,
    streaming: bool,
) -> Spec {
    endpoint.aim(Spec {
        addr: endpoint.addr,
        path: PATH.into(),
        body,
        headers: Vec::new(),
        concurrency,
        requests,
        warmup: Duration::ZERO,
        duration,
        request_timeout: Duration::from_secs(30),
        streaming,
        stagger: Duration::ZERO,
        expect: None,
    })
}

/// The soak's RSS over time.
#[derive(Clone, Debug)]
pub struct Soak {
    pub minutes: u64,
    pub streaming_concurrency: usize,
    pub plain_concurrency: usize,
    /// (seconds since the start, RSS bytes), every [`SOAK_SAMPLE_EVERY`].
    pub samples: Vec<(u64, u64)>,
    /// Just before the soak.
    pub before: Option<u64>,
    /// 10 s after the end.
    pub after: Option<u64>,
    pub streamed: RunResult,
    pub plain: RunResult,
    /// The store writer's counters after the soak (`/api/stats/store`): written, dropped, still queued.
    pub store: Option<(u64, u64, u64)>,
}

pub const SOAK_SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Mixed traffic for `minutes` through the proxy: 20 streams at a time (the run's stream shape) and 10
/// non-streaming clients whose answers the mock delays by 50 ms (a moderate load, not a saturating loop); the
/// RSS sampled every [`SOAK_SAMPLE_EVERY`].
pub async fn soak(
    settings: &Settings,
    proxy: &Endpoint,
    streamed: Bytes,
    plain: Bytes,
    minutes: u64,
) -> anyhow::Result<Soak> {
    let duration = Duration::from_secs(minutes * 60);
    let (streaming_concurrency, plain_concurrency) = (20, 10);
    let before = procs::rss_bytes(proxy.pid);
    let mut stream_spec = spec(
        proxy,
        streamed,
        streaming_concurrency,
        u64::MAX,
        duration,
        true,
    );
    stream_spec.headers.extend(settings.stream_headers()?);
    let mut plain_spec = spec(proxy, plain, plain_concurrency, u64::MAX, duration, false);
    plain_spec.headers.push((
        http::HeaderName::from_static("x-mock-delay-ms"),
        http::HeaderValue::from_static("50"),
    ));
    let pid = proxy.pid;
    let sampler = tokio::spawn(async move {
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut next = Duration::ZERO;
        while next <= duration {
            tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
            if let Some(rss) = procs::rss_bytes(pid) {
                samples.push((next.as_secs(), rss));
                if samples.len() % 6 == 1 {
                    eprintln!(
                        "kimi-bench: soak {:>2}:{:02} RSS {} MiB",
                        next.as_secs() / 60,
                        next.as_secs() % 60,
                        fmt(Some(rss))
                    );
                }
            }
            next += SOAK_SAMPLE_EVERY;
        }
        samples
    });
    let (streamed, plain) = tokio::join!(loadgen::run(stream_spec), loadgen::run(plain_spec));
    let samples = sampler.await.unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = procs::rss_bytes(proxy.pid);
    let store = match crate::fleet::writer_counters(proxy.addr).await {
        Ok(c) => Some((c.written, c.dropped, c.queued + c.held)),
        Err(err) => {
            eprintln!("kimi-bench: soak: cannot read the store's counters: {err:#}");
            None
        }
    };
    Ok(Soak {
        minutes,
        streaming_concurrency,
        plain_concurrency,
        samples,
        before,
        after,
        streamed: streamed?,
        plain: plain?,
        store,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn fmt(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".into(), |b| format!("{:.1}", mib(b)))
}

/// `value` relative to `base`, as a signed percentage.
fn percent(value: Option<u64>, base: Option<u64>) -> String {
    match (value, base) {
        (Some(v), Some(b)) if b > 0 => format!("{:+.0}%", (v as f64 / b as f64 - 1.0) * 100.0),
        _ => "n/a".into(),
    }
}

/// Least-squares slope of RSS over time, in MiB per minute, over the samples from `from_secs` on.
pub fn slope_mib_per_minute(samples: &[(u64, u64)], from_secs: u64) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= from_secs)
        .map(|&(t, rss)| (t as f64 / 60.0, mib(rss)))
        .collect();
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The report's sections for both scenarios.
pub fn render(
    out: &mut String,
    memory: &[MemoryRuns],
    settle: Duration,
    streams: usize,
    soak: Option<&Soak>,
) {
    if !memory.is_empty() {
        let runs = memory.iter().map(|m| m.rounds.len()).max().unwrap_or(0);
        let _ = writeln!(out, "\n## Memory run after run\n");
        let _ = writeln!(
            out,
            "Each build started fresh with accounting and the store on. \"idle\" is before any request, \"warm\" \
             after one (the tokenizer is decoded on first use and kept). Each run opens {streams} streams at \
             once; \"peak\" is the highest RSS sampled while they were open, \"after\" the RSS {} s after they \
             ended; \"late\" is {} s after the last run. Builds alternate within a run. Throughput: \
             non-streaming, concurrency 50, 3 x 2 s per build, alternating. RSS in MiB.\n",
            settle.as_secs(),
            LATE_READING.as_secs()
        );
        let mut head = "| build | idle | warm |".to_string();
        let mut rule = "|---|---:|---:|".to_string();
        for r in 1..=runs {
            let _ = write!(head, " run {r} peak / after |");
            rule.push_str("---:|");
        }
        head.push_str(" late | late vs warm / idle | requests/s | errors |");
        rule.push_str("---:|---:|---:|---:|");
        let _ = writeln!(out, "{head}\n{rule}");
        for m in memory {
            let mut row = format!("| {} | {} | {} |", m.label, fmt(m.idle), fmt(m.warm));
            for round in &m.rounds {
                let _ = write!(row, " {} / {} |", fmt(round.peak), fmt(round.after));
            }
            let _ = write!(
                row,
                " {} | {} / {} | {:.0} | {} |",
                fmt(m.late),
                percent(m.late, m.warm),
                percent(m.late, m.idle),
                m.requests_per_s,
                m.errors
            );
            let _ = writeln!(out, "{row}");
        }
        let _ = writeln!(out);
        for m in memory {
            let afters: Vec<u64> = m.rounds.iter().filter_map(|r| r.after).collect();
            if let (Some(first), Some(last), Some(low), Some(high)) = (
                afters.first(),
                afters.last(),
                afters.iter().min(),
                afters.iter().max(),
            ) {
                let env = if m.env.is_empty() {
                    String::new()
                } else {
                    let vars: Vec<String> = m.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(" (`{}`)", vars.join(" "))
                };
                let _ = writeln!(
                    out,
                    "- {}{env}: after-load RSS from run 1 to run {}: {} → {} MiB (range {} MiB)",
                    m.label,
                    afters.len(),
                    fmt(Some(*first)),
                    fmt(Some(*last)),
                    fmt(Some(high - low)),
                );
            }
        }
    }
    if let Some(soak) = soak {
        let _ = writeln!(out, "\n## Soak\n");
        let store = soak.store.map_or_else(
            || "store counters unavailable".to_string(),
            |(written, dropped, pending)| {
                format!("store: {written} records written, {dropped} dropped, {pending} pending")
            },
        );
        let _ = writeln!(
            out,
            "{} minutes: {} concurrent streams (the run's stream shape) and {} non-streaming clients (the mock \
             waits 50 ms per answer), through kimi-proxy with accounting and the store on. Streams: {} ok, {} \
             errors; non-streaming: {} ok, {} errors; {store}. RSS just before: {} MiB; 10 s after the end: {} \
             MiB.\n",
            soak.minutes,
            soak.streaming_concurrency,
            soak.plain_concurrency,
            soak.streamed.ok,
            soak.streamed.errors,
            soak.plain.ok,
            soak.plain.errors,
            fmt(soak.before),
            fmt(soak.after),
        );
        let half = soak.minutes * 30;
        if let Some(slope) = slope_mib_per_minute(&soak.samples, half) {
            let _ = writeln!(
                out,
                "Trend over the second half (least squares over the {} s samples): {slope:+.3} MiB per minute.\n",
                SOAK_SAMPLE_EVERY.as_secs()
            );
        }
        let _ = writeln!(out, "| time | RSS (MiB) |\n|---:|---:|");
        // One row per minute (the first sample of each minute), plus the last.
        let mut minute = None;
        for (i, (secs, rss)) in soak.samples.iter().enumerate() {
            if minute != Some(secs / 60) || i + 1 == soak.samples.len() {
                minute = Some(secs / 60);
                let _ = writeln!(out, "| {}:{:02} | {:.1} |", secs / 60, secs % 60, mib(*rss));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_flat_and_a_growing_series() {
        let mib = 1024 * 1024;
        let flat: Vec<(u64, u64)> = (0..20).map(|i| (i * 60, 50 * mib)).collect();
        assert!(slope_mib_per_minute(&flat, 0).unwrap().abs() < 1e-9);
        let growing: Vec<(u64, u64)> = (0..20).map(|i| (i * 60, (50 + 2 * i) * mib)).collect();
        assert!((slope_mib_per_minute(&growing, 300).unwrap() - 2.0).abs() < 1e-9);
        assert!(slope_mib_per_minute(&growing[..2], 0).is_none());
    }

    #[test]
    fn alternation_reverses_every_other_round() {
        assert_eq!(alternate(3, 0), vec![0, 1, 2]);
        assert_eq!(alternate(3, 1), vec![2, 1, 0]);
    }
}
