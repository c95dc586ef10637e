//! The markdown report.

use std::fmt::Write as _;

use crate::loadgen::{RunResult, Summary};
use crate::scenarios::{Pair, Results, Scenario, Settings};
use crate::sysinfo::Machine;

/// Added p99 latency at concurrency 1, µs.
pub const TARGET_ADDED_P99_US: i64 = 150;
/// Proxy throughput as a share of direct at concurrency 50.
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.5;
/// Added TTFT p99, µs.
pub const TARGET_ADDED_TTFT_P99_US: i64 = 200;
/// Streams that must all succeed at once.
pub const TARGET_STREAMS: usize = 1_000;
/// RSS bounds, MiB.
pub const TARGET_IDLE_RSS_MIB: f64 = 30.0;
pub const TARGET_STREAMS_RSS_MIB: f64 = 150.0;

/// Other processes' (or the hypervisor's) share of the CPU above which the report warns.
const NOISY_SHARE: f64 = 0.05;

/// `412 µs`, `20.13 ms`, `1.52 s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// A signed difference in µs: `+35 µs`, `-12 µs`, `+1.20 ms`.
pub fn fmt_added(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "+" };
    format!("{sign}{}", fmt_us(us.unsigned_abs()))
}

fn added(proxy: u64, direct: u64) -> i64 {
    i64::try_from(i128::from(proxy) - i128::from(direct)).unwrap_or(i64::MAX)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn fmt_mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".into(), |b| format!("{:.1} MiB", mib(b)))
}

fn verdict(pass: bool) -> &'static str {
    if pass { "pass" } else { "**miss**" }
}

/// One `| metric | direct | proxy | added |` row from a percentile of both sides.
fn row(out: &mut String, metric: &str, direct: u64, proxy: u64) {
    let _ = writeln!(
        out,
        "| {metric} | {} | {} | {} |",
        fmt_us(direct),
        fmt_us(proxy),
        fmt_added(added(proxy, direct))
    );
}

fn percentile_rows(out: &mut String, what: &str, direct: &Summary, proxy: &Summary, all: bool) {
    row(out, &format!("{what} p50"), direct.p50, proxy.p50);
    if all {
        row(out, &format!("{what} p90"), direct.p90, proxy.p90);
    }
    row(out, &format!("{what} p99"), direct.p99, proxy.p99);
    if all {
        row(out, &format!("{what} p99.9"), direct.p999, proxy.p999);
        row(out, &format!("{what} max"), direct.max, proxy.max);
        let _ = writeln!(
            out,
            "| {what} mean | {:.0} µs | {:.0} µs | {:+.0} µs |",
            direct.mean,
            proxy.mean,
            proxy.mean - direct.mean
        );
    }
}

fn counts_row(out: &mut String, what: &str, pair: &Pair) {
    let _ = writeln!(
        out,
        "| {what} ok / errors | {} / {} | {} / {} | |",
        pair.direct.ok, pair.direct.errors, pair.proxy.ok, pair.proxy.errors
    );
}

fn error_notes(out: &mut String, pair: &Pair) {
    for (side, result) in [("direct", &pair.direct), ("proxy", &pair.proxy)] {
        if !result.error_samples.is_empty() {
            let _ = writeln!(
                out,
                "\nFirst {side} errors: {}",
                result
                    .error_samples
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if result.warmup_errors > 0 {
            let _ = writeln!(
                out,
                "\n{side}: {} errors during warm-up (not counted above).",
                result.warmup_errors
            );
        }
    }
}

fn table_head(out: &mut String, third: &str) {
    let _ = writeln!(out, "| metric | direct | proxy | {third} |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
}

fn summary(result: &RunResult) -> (Summary, Summary, Summary) {
    (
        Summary::of(&result.latency),
        Summary::of(&result.ttft),
        Summary::of(&result.gaps),
    )
}

/// One target line: description, measured value, verdict (`None` when not measured).
struct Target {
    what: String,
    measured: String,
    pass: Option<bool>,
}

pub fn render(settings: &Settings, machine: &Machine, results: &Results) -> String {
    let mut out = String::new();
    let mut targets: Vec<Target> = Vec::new();
    let _ = writeln!(
        out,
        "# kimi-proxy benchmark: proxy vs direct upstream{}\n",
        if settings.quick { " (--quick)" } else { "" }
    );
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| date | {} |", machine.date);
    let _ = writeln!(out, "| CPU | {} |", machine.cpu);
    let _ = writeln!(out, "| cores | {} |", machine.cores);
    let _ = writeln!(out, "| kernel | {} |", machine.kernel);
    let _ = writeln!(out, "| memory | {} |", machine.memory);
    let _ = writeln!(out, "| rustc | {} |", machine.rustc);
    let _ = writeln!(out, "| kimi-proxy commit | {} |", machine.commit);

    let _ = writeln!(out, "\n## Configuration\n");
    let _ = writeln!(
        out,
        "Everything on 127.0.0.1: the mock upstream (`mock-upstream`), kimi-proxy in front of it (release \
         builds, `KIMI_PROXY_LOG=warn`) and the load generator (`kimi-bench`, {} tokio worker thread{}) share \
         the machine. Closed loop: every virtual user owns one keep-alive HTTP/1.1 connection (TCP_NODELAY) \
         and sends its next request once the previous answer is fully read. \"direct\" is \
         `POST http://MOCK/v1/chat/completions`, \"proxy\" is the same request to the proxy, which forwards it to \
         the same mock. The sides alternate round by round (direct, proxy, proxy, direct, ...) and each \
         round starts with a warm-up that is not recorded. \"added\" is the proxy's percentile minus the \
         direct one. Latency is the time to read the whole answer; TTFT is the time to the first body \
         byte; a gap is the time between two successive body frames that complete an SSE event.\n",
        settings.threads,
        if settings.threads == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "- scenarios: {}",
        settings
            .scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "- request body: {} bytes of JSON (a system and a user message of mixed prose and code, ~4k tokens), \
         model `mock-model`; the same bytes on every request, so any per-message cache in the proxy stays warm",
        settings.body_bytes
    );
    let _ = writeln!(
        out,
        "- rounds per side: {}; warm-up per round: {} ms",
        settings.rounds,
        settings.warmup.as_millis()
    );
    if settings.has(Scenario::Latency) {
        let _ = writeln!(
            out,
            "- latency: concurrency 1, non-streaming, {} requests per side",
            settings.latency_requests
        );
    }
    if settings.has(Scenario::Throughput) {
        let _ = writeln!(
            out,
            "- throughput: concurrency {}, non-streaming, {:.1} s per side",
            settings.throughput_concurrency,
            settings.throughput_duration.as_secs_f64()
        );
    }
    if settings.has(Scenario::Streaming) {
        let _ = writeln!(
            out,
            "- streaming: concurrency {}, {} streams per side, each {} chunks x {} ms \
             (`x-mock-chunks`, `x-mock-chunk-delay-ms`); the VUs start staggered over one stream length; each round is preceded by a warm-up of 2 short unpaced streams per VU",
            settings.streaming_concurrency,
            settings.streaming_requests,
            settings.chunks,
            settings.chunk_delay_ms
        );
    }
    if settings.has(Scenario::StreamsConcurrency) {
        let _ = writeln!(
            out,
            "- streams-concurrency: {} streams started together (one connection each), {} chunks x {} ms, \
             one round per side",
            settings
                .streams
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and "),
            settings.chunks,
            settings.chunk_delay_ms
        );
    }
    if settings.has(Scenario::Memory) {
        let _ = writeln!(
            out,
            "- memory: proxy RSS (`VmRSS` of /proc/PID/status) idle after start, peak during \
             streams-concurrency (sampled every 10 ms), and 2 s after the load"
        );
    }

    let _ = write!(
        out,
        "- measured in {:.0} s (servers started to last scenario)",
        results.elapsed.as_secs_f64()
    );
    match &results.cpu {
        Some(cpu) => {
            let _ = writeln!(
                out,
                "; CPU use over that time, as a share of the whole machine: bench and servers {:.1}%, \
                 other processes {:.1}%, hypervisor steal {:.1}%",
                cpu.ours * 100.0,
                cpu.others * 100.0,
                cpu.steal * 100.0
            );
            if cpu.others > NOISY_SHARE || cpu.steal > NOISY_SHARE {
                let _ = writeln!(
                    out,
                    "\n**Warning: the machine was busy with other work during the run (see the CPU shares \
                     above); the figures are noisy. Rerun on a quiet machine.**"
                );
            }
        }
        None => {
            let _ = writeln!(out);
        }
    }

    if let Some(pair) = &results.latency {
        let (d, _, _) = summary(&pair.direct);
        let (p, _, _) = summary(&pair.proxy);
        let _ = writeln!(out, "\n## latency (concurrency 1, non-streaming)\n");
        table_head(&mut out, "added");
        percentile_rows(&mut out, "latency", &d, &p, true);
        counts_row(&mut out, "requests", pair);
        error_notes(&mut out, pair);
        let add = added(p.p99, d.p99);
        targets.push(Target {
            what: format!("added p99 latency at concurrency 1 ≤ {TARGET_ADDED_P99_US} µs"),
            measured: fmt_added(add),
            pass: Some(add <= TARGET_ADDED_P99_US && pair.proxy.errors == 0 && p.count > 0),
        });
    }

    if let Some(pair) = &results.throughput {
        let (d, _, _) = summary(&pair.direct);
        let (p, _, _) = summary(&pair.proxy);
        let (drps, prps) = (pair.direct.rps(), pair.proxy.rps());
        let ratio = if drps > 0.0 { prps / drps } else { 0.0 };
        let _ = writeln!(
            out,
            "\n## throughput (concurrency {}, non-streaming)\n",
            settings.throughput_concurrency
        );
        table_head(&mut out, "added / ratio");
        let _ = writeln!(
            out,
            "| requests/s | {drps:.0} | {prps:.0} | {:.1}% |",
            ratio * 100.0
        );
        percentile_rows(&mut out, "latency", &d, &p, false);
        counts_row(&mut out, "requests", pair);
        error_notes(&mut out, pair);
        targets.push(Target {
            what: format!(
                "proxy throughput ≥ {:.0}% of direct at concurrency {}",
                TARGET_THROUGHPUT_RATIO * 100.0,
                settings.throughput_concurrency
            ),
            measured: format!("{:.1}%", ratio * 100.0),
            pass: Some(ratio >= TARGET_THROUGHPUT_RATIO && pair.proxy.errors == 0),
        });
    }

    if let Some(pair) = &results.streaming {
        let (dl, dt, dg) = summary(&pair.direct);
        let (pl, pt, pg) = summary(&pair.proxy);
        let _ = writeln!(
            out,
            "\n## streaming (concurrency {}, {} chunks x {} ms)\n",
            settings.streaming_concurrency, settings.chunks, settings.chunk_delay_ms
        );
        table_head(&mut out, "added");
        percentile_rows(&mut out, "TTFT", &dt, &pt, false);
        row(&mut out, "TTFT max", dt.max, pt.max);
        percentile_rows(&mut out, "inter-chunk gap", &dg, &pg, false);
        row(&mut out, "inter-chunk gap max", dg.max, pg.max);
        row(&mut out, "whole stream p50", dl.p50, pl.p50);
        counts_row(&mut out, "streams", pair);
        error_notes(&mut out, pair);
        let add = added(pt.p99, dt.p99);
        targets.push(Target {
            what: format!("added TTFT p99 ≤ {TARGET_ADDED_TTFT_P99_US} µs"),
            measured: fmt_added(add),
            pass: Some(add <= TARGET_ADDED_TTFT_P99_US && pair.proxy.errors == 0 && pt.count > 0),
        });
    }

    if !results.streams.is_empty() {
        let _ = writeln!(out, "\n## streams-concurrency\n");
        for run in &results.streams {
            let pair = &run.pair;
            let (_, dt, dg) = summary(&pair.direct);
            let (_, pt, pg) = summary(&pair.proxy);
            let _ = writeln!(
                out,
                "### {} concurrent streams ({} chunks x {} ms)\n",
                run.streams, settings.chunks, settings.chunk_delay_ms
            );
            table_head(&mut out, "added");
            counts_row(&mut out, "streams", pair);
            row(&mut out, "TTFT p99", dt.p99, pt.p99);
            row(&mut out, "inter-chunk gap p50", dg.p50, pg.p50);
            row(&mut out, "inter-chunk gap p99", dg.p99, pg.p99);
            row(&mut out, "inter-chunk gap max", dg.max, pg.max);
            let _ = writeln!(
                out,
                "| proxy peak RSS | | {} | |",
                fmt_mib(run.proxy_peak_rss)
            );
            error_notes(&mut out, pair);
            let _ = writeln!(out);
        }
    }
    let thousand = results.streams.iter().find(|r| r.streams == TARGET_STREAMS);
    if settings.has(Scenario::StreamsConcurrency) {
        targets.push(match thousand {
            Some(run) => Target {
                what: format!(
                    "{TARGET_STREAMS} concurrent streams through the proxy with no error"
                ),
                measured: format!("{} ok, {} errors", run.pair.proxy.ok, run.pair.proxy.errors),
                pass: Some(
                    run.pair.proxy.errors == 0
                        && run.pair.proxy.ok == u64::try_from(TARGET_STREAMS).unwrap_or(0),
                ),
            },
            None => Target {
                what: format!(
                    "{TARGET_STREAMS} concurrent streams through the proxy with no error"
                ),
                measured: "not run (only the full run has 1,000 streams)".into(),
                pass: None,
            },
        });
    }

    if let Some(memory) = &results.memory {
        let _ = writeln!(out, "\n## memory (proxy RSS)\n");
        let _ = writeln!(out, "| when | proxy RSS |\n|---|---:|");
        let _ = writeln!(out, "| idle after start | {} |", fmt_mib(memory.idle));
        for run in &results.streams {
            let _ = writeln!(
                out,
                "| peak during {} streams | {} |",
                run.streams,
                fmt_mib(run.proxy_peak_rss)
            );
        }
        let _ = writeln!(
            out,
            "| 2 s after the load | {} |",
            fmt_mib(memory.after_load)
        );
        let _ = writeln!(
            out,
            "| high-water mark (VmHWM, whole run) | {} |",
            fmt_mib(memory.high_water)
        );
        targets.push(Target {
            what: format!("idle RSS ≤ {TARGET_IDLE_RSS_MIB:.0} MiB"),
            measured: fmt_mib(memory.idle),
            pass: memory.idle.map(|b| mib(b) <= TARGET_IDLE_RSS_MIB),
        });
        targets.push(match thousand {
            Some(run) => Target {
                what: format!(
                    "RSS ≤ {TARGET_STREAMS_RSS_MIB:.0} MiB with {TARGET_STREAMS} streams"
                ),
                measured: fmt_mib(run.proxy_peak_rss),
                pass: run.proxy_peak_rss.map(|b| mib(b) <= TARGET_STREAMS_RSS_MIB),
            },
            None => Target {
                what: format!(
                    "RSS ≤ {TARGET_STREAMS_RSS_MIB:.0} MiB with {TARGET_STREAMS} streams"
                ),
                measured: "not run".into(),
                pass: None,
            },
        });
    }

    if !targets.is_empty() {
        let _ = writeln!(out, "\n## Targets\n");
        let _ = writeln!(out, "| target | measured | result |\n|---|---:|---|");
        for target in &targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                target.what,
                target.measured,
                target.pass.map_or("not measured", verdict)
            );
        }
    }
    let _ = writeln!(
        out,
        "\nRerun: `cargo run --release -p kimi-bench --{}{}`. Percentiles come from HdrHistogram (4 significant \
         figures); with few samples the high percentiles are close to the maximum. At concurrency 1 much of the \
         time is spent waking idle CPUs (more so in a VM), so absolute figures move between runs and machines: \
         compare direct and proxy from the same run.",
        if settings.args.is_empty() { "" } else { " " },
        settings.args
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::Memory;
    use crate::sysinfo::Machine;

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_us(0), "0 µs");
        assert_eq!(fmt_us(999), "999 µs");
        assert_eq!(fmt_us(20_126), "20.13 ms");
        assert_eq!(fmt_us(1_520_000), "1.52 s");
        assert_eq!(fmt_added(35), "+35 µs");
        assert_eq!(fmt_added(-12), "-12 µs");
        assert_eq!(fmt_added(1_200), "+1.20 ms");
        assert_eq!(added(100, 250), -150);
    }

    #[test]
    fn report_has_tables_and_verdicts() -> anyhow::Result<()> {
        let mut direct = RunResult::empty()?;
        let mut proxy = RunResult::empty()?;
        for _ in 0..100 {
            direct.latency.saturating_record(100);
            proxy.latency.saturating_record(180);
        }
        direct.ok = 100;
        proxy.ok = 100;
        let settings = Settings::new(true);
        let machine = Machine {
            cpu: "Test CPU".into(),
            cores: 2,
            kernel: "6.0".into(),
            memory: "24.0 GiB".into(),
            date: "2024-01-01 00:00:00 UTC".into(),
            rustc: "rustc 1.95.0".into(),
            commit: "abc1234".into(),
        };
        let results = Results {
            latency: Some(Pair { direct, proxy }),
            memory: Some(Memory {
                idle: Some(40 * 1024 * 1024),
                after_load: None,
                high_water: None,
            }),
            ..Results::default()
        };
        let report = render(&settings, &machine, &results);
        assert!(report.contains("| latency p50 | 100 µs | 180 µs | +80 µs |"));
        assert!(report.contains("| added p99 latency at concurrency 1 ≤ 150 µs | +80 µs | pass |"));
        assert!(report.contains("| idle RSS ≤ 30 MiB | 40.0 MiB | **miss** |"));
        assert!(report.contains("| CPU | Test CPU |"));
        Ok(())
    }
}
