//! The markdown report.

use std::fmt::Write as _;

use crate::loadgen::{RunResult, Summary};
use crate::scenarios::{Memory, Pair, Results, Scenario, Settings};
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
    if !settings.peers.is_empty() {
        let _ = writeln!(
            out,
            "- peers: {} (installed, configured and measured as described under \"Peers side by side\")",
            settings
                .peers
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if settings.has(Scenario::Frontier) {
        let _ = writeln!(
            out,
            "- frontier: non-streaming, concurrency {} (stopping once both sides are past 10 ms p99 or \
             failing), {:.1} s per side and step after a 300 ms warm-up, direct and proxy alternating which \
             goes first",
            settings
                .frontier_steps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            settings.frontier_step.as_secs_f64()
        );
    }
    if settings.off {
        let _ = writeln!(
            out,
            "- modes: on and off; \"proxy-off\" is a second kimi-proxy (own config file and data directory) \
             with `[server] token_accounting = false` and `[store] enabled = false`, one more side of the \
             latency and throughput rounds"
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
        if let Some(cpu) = CpuPerRequest::of(pair) {
            let _ = writeln!(
                out,
                "\nCPU time per request (user + system from /proc, every request of the side incl. warm-up): \
                 the proxy {:.1} µs, the mock behind it {:.1} µs (proxy ÷ mock = {:.2}); the mock serving \
                 directly {:.1} µs.",
                cpu.proxy_us,
                cpu.mock_behind_us,
                cpu.ratio(),
                cpu.mock_direct_us
            );
            targets.push(Target {
                what: format!(
                    "proxy CPU time per request ≤ the mock's at concurrency {}",
                    settings.throughput_concurrency
                ),
                measured: format!(
                    "{:.1} µs vs {:.1} µs ({:.2}×)",
                    cpu.proxy_us,
                    cpu.mock_behind_us,
                    cpu.ratio()
                ),
                pass: Some(cpu.ratio() <= 1.0),
            });
        }
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

    render_modes(&mut out, settings, results);
    render_frontier(&mut out, settings, results);
    crate::dashboards::render(&mut out, settings, &results.dashboards);
    if let Some(cache) = &results.cache {
        crate::cache::render(&mut out, settings, cache);
        let (p50, p99) = cache.added_c1().unwrap_or((i64::MAX, i64::MAX));
        for (name, added) in [("p50", p50), ("p99", p99)] {
            targets.push(Target {
                what: format!(
                    "cache hit adds < {} µs over the direct answer (c=1, {name})",
                    crate::cache::TARGET_ADDED_US
                ),
                measured: fmt_added(added),
                pass: Some(cache.verified() && added < crate::cache::TARGET_ADDED_US),
            });
        }
    }
    if let Some(responses) = &results.responses {
        crate::responses::render(&mut out, settings, responses);
        let clean = responses.errors() == 0;
        let ratio = responses.added_ratio();
        targets.push(Target {
            what: format!(
                "Responses client adds ≤ {}× the chat client's added p50 (c=1, translated to the chat mock)",
                crate::responses::TARGET_ADDED_RATIO
            ),
            measured: ratio.map_or("n/a".into(), |r| format!("{r:.2}×")),
            pass: ratio.map(|r| clean && r <= crate::responses::TARGET_ADDED_RATIO),
        });
        let share = responses.throughput_share();
        targets.push(Target {
            what: format!(
                "Responses client keeps ≥ {:.0} % of the chat client's throughput (c={})",
                crate::responses::TARGET_THROUGHPUT_SHARE * 100.0,
                settings.throughput_concurrency
            ),
            measured: share.map_or("n/a".into(), |s| format!("{:.1} %", s * 100.0)),
            pass: share.map(|s| clean && s >= crate::responses::TARGET_THROUGHPUT_SHARE),
        });
    }
    if let Some(messages) = &results.messages {
        crate::messages::render(&mut out, settings, messages);
        let clean = messages.errors() == 0;
        let over = messages.native_over_chat();
        targets.push(Target {
            what: "Messages native adds no more than chat completions (added p50, c=1)".into(),
            measured: fmt_added(over),
            pass: Some(clean && over <= 0),
        });
        let ratio = messages.translated_ratio();
        targets.push(Target {
            what: format!(
                "Messages translated adds ≤ {}× the native path's added p50 (c=1)",
                crate::messages::TARGET_ADDED_RATIO
            ),
            measured: ratio.map_or("n/a".into(), |r| format!("{r:.2}×")),
            pass: ratio.map(|r| clean && r <= crate::messages::TARGET_ADDED_RATIO),
        });
        let share = messages.throughput_share();
        targets.push(Target {
            what: format!(
                "Messages translated keeps ≥ {:.0} % of the native path's throughput (c={})",
                crate::messages::TARGET_THROUGHPUT_SHARE * 100.0,
                settings.throughput_concurrency
            ),
            measured: share.map_or("n/a".into(), |s| format!("{:.1} %", s * 100.0)),
            pass: share.map(|s| clean && s >= crate::messages::TARGET_THROUGHPUT_SHARE),
        });
    }
    if let Some(stores) = &results.store_backends {
        crate::fleet::render_store_backends(&mut out, settings, stores);
        let share = stores.pg_share();
        targets.push(Target {
            what: format!(
                "proxy with the PostgreSQL store keeps ≥ {:.0} % of the SQLite store's throughput (c={}, no \
                 record dropped)",
                crate::fleet::TARGET_PG_SHARE * 100.0,
                settings.throughput_concurrency
            ),
            measured: share.map_or("n/a".into(), |s| format!("{:.1} %", s * 100.0)),
            pass: share.map(|s| stores.clean() && s >= crate::fleet::TARGET_PG_SHARE),
        });
    }
    if let Some(instances) = &results.instances {
        crate::fleet::render_instances(&mut out, settings, instances);
    }
    for phase in results.dashboards.iter().filter(|p| p.dashboards > 0) {
        targets.push(Target {
            what: format!("event delivery p99 ≤ 10 ms ({})", phase.label),
            measured: phase.delivery.map_or("no events".into(), |d| fmt_us(d.p99)),
            pass: Some(phase.delivery.is_some_and(|d| d.p99 <= 10_000) && phase.readers_cut == 0),
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
    render_peers(&mut out, settings, results);
    crate::endurance::render(
        &mut out,
        &results.memory_runs,
        settings.memory_settle,
        settings.streams.iter().copied().max().unwrap_or(1_000),
        results.soak.as_ref(),
    );
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

/// `--modes on,off`: latency and throughput with the proxy on and off, and what accounting and the store cost.
fn render_modes(out: &mut String, settings: &Settings, results: &Results) {
    let latency = results
        .latency
        .as_ref()
        .and_then(|p| p.off.as_ref().map(|off| (p, off)));
    let throughput = results
        .throughput
        .as_ref()
        .and_then(|p| p.off.as_ref().map(|off| (p, off)));
    if latency.is_none() && throughput.is_none() {
        return;
    }
    let _ = writeln!(out, "\n## Accounting and store: proxy on vs off\n");
    let _ = writeln!(
        out,
        "\"proxy\" runs the default config (token accounting and the SQLite store on); \"proxy-off\" has \
         `[server] token_accounting = false` and `[store] enabled = false` (requests only forwarded and \
         timed). Both are sides of the same alternating rounds. A proxy cell reads `value (added vs direct)`; \
         requests/s read `rate (share of direct)`.\n"
    );
    let columns: Vec<String> = vec!["direct".into(), "proxy (on)".into(), "proxy-off".into()];
    let mut cost: Vec<String> = Vec::new();
    if let Some((pair, off)) = latency {
        let all = [&pair.direct, &pair.proxy, off];
        let _ = writeln!(out, "### latency (concurrency 1, non-streaming)\n");
        multi_head(out, &columns);
        summary_row(out, "latency p50", &all, |r| latency_of(r).p50);
        summary_row(out, "latency p99", &all, |r| latency_of(r).p99);
        summary_row(out, "latency p99.9", &all, |r| latency_of(r).p999);
        multi_counts(out, "requests", &all);
        let (on, off) = (latency_of(&pair.proxy), latency_of(off));
        cost.push(format!(
            "{} at p50, {} at p99 (c=1)",
            fmt_added(added(on.p50, off.p50)),
            fmt_added(added(on.p99, off.p99))
        ));
        let _ = writeln!(out);
    }
    if let Some((pair, off)) = throughput {
        let all = [&pair.direct, &pair.proxy, off];
        let _ = writeln!(
            out,
            "### throughput (concurrency {}, non-streaming)\n",
            settings.throughput_concurrency
        );
        multi_head(out, &columns);
        let direct_rps = pair.direct.rps();
        let cells: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if i > 0 && direct_rps > 0.0 {
                    format!("{:.0} ({:.1}%)", r.rps(), r.rps() / direct_rps * 100.0)
                } else {
                    format!("{:.0}", r.rps())
                }
            })
            .collect();
        let _ = writeln!(out, "| requests/s | {} |", cells.join(" | "));
        summary_row(out, "latency p50", &all, |r| latency_of(r).p50);
        summary_row(out, "latency p99", &all, |r| latency_of(r).p99);
        multi_counts(out, "requests", &all);
        let (on, off) = (pair.proxy.rps(), off.rps());
        let share = if off > 0.0 {
            format!(" ({:+.1}%)", (on - off) / off * 100.0)
        } else {
            String::new()
        };
        cost.push(format!(
            "{:+.0} requests/s{share} at c={}",
            on - off,
            settings.throughput_concurrency
        ));
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "**What accounting and the store cost** (proxy on minus proxy off): {}.",
        cost.join("; ")
    );
}

/// p99 bounds of the frontier table, µs.
const FRONTIER_BOUNDS_US: [u64; 3] = [1_000, 5_000, 10_000];

/// The frontier scenario: every step, then the best rate under each p99 bound.
fn render_frontier(out: &mut String, settings: &Settings, results: &Results) {
    if results.frontier.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## throughput frontier (non-streaming, {:.1} s per side and step)\n",
        settings.frontier_step.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| concurrency | direct requests/s | direct p99 | direct errors | proxy requests/s | proxy p99 | proxy errors |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
    let point = |c: usize, r: &RunResult| (c, r.rps(), latency_of(r).p99, r.errors);
    let mut direct = Vec::new();
    let mut proxy = Vec::new();
    for step in &results.frontier {
        let d = point(step.concurrency, &step.direct);
        let p = point(step.concurrency, &step.proxy);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {:.0} | {} | {} |",
            step.concurrency,
            d.1,
            fmt_us(d.2),
            d.3,
            p.1,
            fmt_us(p.2),
            p.3
        );
        direct.push(d);
        proxy.push(p);
    }
    let _ = writeln!(
        out,
        "\nMost requests/s with p99 under the bound and no error (at concurrency):\n"
    );
    let _ = writeln!(out, "| p99 under | direct | proxy | proxy / direct |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for bound in FRONTIER_BOUNDS_US {
        let d = crate::scenarios::best_under(&direct, bound);
        let p = crate::scenarios::best_under(&proxy, bound);
        let cell = |best: Option<(usize, f64)>| {
            best.map_or_else(|| "none".to_owned(), |(c, rps)| format!("{rps:.0} (c={c})"))
        };
        let ratio = match (d, p) {
            (Some((_, d)), Some((_, p))) if d > 0.0 => format!("{:.1}%", p / d * 100.0),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} |",
            fmt_us(bound),
            cell(d),
            cell(p)
        );
    }
}

/// The sides' results of one scenario: direct, proxy, then each peer.
fn sides(pair: &Pair) -> Vec<&RunResult> {
    let mut sides = vec![&pair.direct, &pair.proxy];
    sides.extend(pair.peers.iter());
    sides
}

/// `| metric | direct | gateway (added) | ... |` from one value per side, the first being direct.
fn multi_row(out: &mut String, metric: &str, values: &[u64]) {
    let direct = values.first().copied().unwrap_or(0);
    let mut line = format!("| {metric} |");
    for (i, &value) in values.iter().enumerate() {
        if i == 0 {
            let _ = write!(line, " {} |", fmt_us(value));
        } else {
            let _ = write!(
                line,
                " {} ({}) |",
                fmt_us(value),
                fmt_added(added(value, direct))
            );
        }
    }
    let _ = writeln!(out, "{line}");
}

/// A row of one summary field over every side.
fn summary_row(
    out: &mut String,
    metric: &str,
    results: &[&RunResult],
    pick: impl Fn(&RunResult) -> u64,
) {
    let values: Vec<u64> = results.iter().map(|r| pick(r)).collect();
    multi_row(out, metric, &values);
}

fn multi_head(out: &mut String, columns: &[String]) {
    let _ = writeln!(out, "| metric | {} |", columns.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns.len()));
}

fn multi_counts(out: &mut String, what: &str, results: &[&RunResult]) {
    let cells: Vec<String> = results
        .iter()
        .map(|r| format!("{} / {}", r.ok, r.errors))
        .collect();
    let _ = writeln!(out, "| {what} ok / errors | {} |", cells.join(" | "));
}

fn multi_error_notes(out: &mut String, columns: &[String], results: &[&RunResult]) {
    for (name, result) in columns.iter().zip(results.iter()).skip(2) {
        if !result.error_samples.is_empty() {
            let _ = writeln!(
                out,
                "\nFirst {name} errors: {}",
                result
                    .error_samples
                    .iter()
                    .map(|e| format!("`{}`", e.replace('`', "'")))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if result.warmup_errors > 0 {
            let _ = writeln!(
                out,
                "\n{name}: {} errors during warm-up (not counted above).",
                result.warmup_errors
            );
        }
    }
}

fn latency_of(result: &RunResult) -> Summary {
    Summary::of(&result.latency)
}

fn ttft_of(result: &RunResult) -> Summary {
    Summary::of(&result.ttft)
}

fn gaps_of(result: &RunResult) -> Summary {
    Summary::of(&result.gaps)
}

/// Mean number of event-carrying body frames per successful stream (gaps + 1).
fn frames_per_stream(result: &RunResult) -> Option<f64> {
    (result.ok > 0).then(|| result.gaps.len() as f64 / result.ok as f64 + 1.0)
}

/// The "Peers side by side" section: how each peer was set up, then every scenario with one column per side.
fn render_peers(out: &mut String, settings: &Settings, results: &Results) {
    if results.peer_reports.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## Peers side by side\n");
    let _ = writeln!(
        out,
        "The same scenarios, in the same run, through peer gateways pointed at the same mock. Every peer is one \
         more side of each scenario: the sides take turns round by round (direct, proxy, peers, then the \
         reverse), each after the same unrecorded warm-up, with the same body and `x-mock-*` headers (plus the \
         headers the peer needs, below). A gateway cell reads `value (added vs direct)`; requests/s read \
         `rate (share of direct)`. Each peer runs with its defaults apart from what is listed: that is what a \
         user who installs it gets. They share the 2 cores with the load generator, the mock and kimi-proxy \
         (idle while another side is measured). A peer's memory is the RSS of its whole process tree; \
         \"idle\" is taken 0.5 s after it first answers its health check, before any chat request, as for \
         kimi-proxy."
    );
    for report in &results.peer_reports {
        let _ = writeln!(
            out,
            "\n### {} (`{}`)\n",
            report.peer.title(),
            report.peer.name()
        );
        match &report.failure {
            Some(failure) => {
                // The first line says what failed; the rest (a log's end) goes in a block.
                let (head, details) = failure.trim().split_once('\n').unwrap_or((failure, ""));
                let _ = writeln!(out, "- **not measured**: {}", head.trim());
                if !details.trim().is_empty() {
                    let _ = writeln!(out, "\n```text\n{}\n```\n", details.trim());
                }
            }
            None => {
                let _ = writeln!(out, "- measured: yes");
            }
        }
        if !report.version.is_empty() {
            let _ = writeln!(out, "- version: {}", report.version);
        }
        if !report.install.is_empty() {
            let _ = writeln!(out, "- install: {}", report.install);
        }
        for line in &report.config {
            let _ = writeln!(out, "- configuration: {line}");
        }
        if !report.command.is_empty() {
            let _ = writeln!(out, "- command: `{}`", report.command);
        }
        if !report.requests.is_empty() {
            let _ = writeln!(out, "- requests: {}", report.requests);
        }
        for note in &report.notes {
            let _ = writeln!(out, "- note: {note}");
        }
        if let Some((path, lang, text)) = &report.config_file {
            let _ = writeln!(out, "\n`{path}`:\n\n```{lang}\n{}\n```", text.trim_end());
        }
    }
    if results.peers.is_empty() {
        let _ = writeln!(out, "\nNo peer could be measured in this run.");
        return;
    }
    let mut columns: Vec<String> = vec!["direct".into(), "kimi-proxy".into()];
    columns.extend(results.peers.iter().cloned());

    // Headline: one row per gateway.
    let _ = writeln!(out, "\n### Summary\n");
    let _ = writeln!(
        out,
        "| gateway | added p50 latency (c=1) | added p99 latency (c=1) | throughput vs direct (c={}) | added TTFT p99 (streaming) | idle RSS | RSS 2 s after the load |",
        settings.throughput_concurrency
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for (index, name) in columns.iter().enumerate().skip(1) {
        let pick = |pair: &Option<Pair>| -> Option<(RunResult, RunResult)> {
            let pair = pair.as_ref()?;
            let sides = sides(pair);
            Some(((*sides.first()?).clone(), (*sides.get(index)?).clone()))
        };
        let latency = pick(&results.latency).map_or_else(
            || ("n/a".to_owned(), "n/a".to_owned()),
            |(d, g)| {
                let (d, g) = (latency_of(&d), latency_of(&g));
                (
                    fmt_added(added(g.p50, d.p50)),
                    fmt_added(added(g.p99, d.p99)),
                )
            },
        );
        let throughput = pick(&results.throughput).map_or_else(
            || "n/a".to_owned(),
            |(d, g)| {
                if d.rps() > 0.0 {
                    format!("{:.1}%", g.rps() / d.rps() * 100.0)
                } else {
                    "n/a".into()
                }
            },
        );
        let ttft = pick(&results.streaming).map_or_else(
            || "n/a".to_owned(),
            |(d, g)| fmt_added(added(ttft_of(&g).p99, ttft_of(&d).p99)),
        );
        let memory = if index == 1 {
            results.memory.clone()
        } else {
            results.peer_memory.get(index - 2).cloned()
        };
        let (idle, after) = memory.map_or((None, None), |m| (m.idle, m.after_load));
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {throughput} | {ttft} | {} | {} |",
            latency.0,
            latency.1,
            fmt_mib(idle),
            fmt_mib(after)
        );
    }

    if let Some(pair) = &results.latency {
        let all = sides(pair);
        let _ = writeln!(
            out,
            "\n### latency (concurrency 1, non-streaming), all sides\n"
        );
        multi_head(out, &columns);
        summary_row(out, "latency p50", &all, |r| latency_of(r).p50);
        summary_row(out, "latency p90", &all, |r| latency_of(r).p90);
        summary_row(out, "latency p99", &all, |r| latency_of(r).p99);
        summary_row(out, "latency p99.9", &all, |r| latency_of(r).p999);
        summary_row(out, "latency max", &all, |r| latency_of(r).max);
        summary_row(out, "latency mean", &all, |r| {
            latency_of(r).mean.round() as u64
        });
        multi_counts(out, "requests", &all);
        multi_error_notes(out, &columns, &all);
    }

    if let Some(pair) = &results.throughput {
        let all = sides(pair);
        let _ = writeln!(
            out,
            "\n### throughput (concurrency {}, non-streaming), all sides\n",
            settings.throughput_concurrency
        );
        multi_head(out, &columns);
        let direct_rps = pair.direct.rps();
        let cells: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if i == 0 {
                    format!("{:.0}", r.rps())
                } else if direct_rps > 0.0 {
                    format!("{:.0} ({:.1}%)", r.rps(), r.rps() / direct_rps * 100.0)
                } else {
                    format!("{:.0}", r.rps())
                }
            })
            .collect();
        let _ = writeln!(out, "| requests/s | {} |", cells.join(" | "));
        summary_row(out, "latency p50", &all, |r| latency_of(r).p50);
        summary_row(out, "latency p99", &all, |r| latency_of(r).p99);
        multi_counts(out, "requests", &all);
        multi_error_notes(out, &columns, &all);
    }

    if let Some(pair) = &results.streaming {
        let all = sides(pair);
        let _ = writeln!(
            out,
            "\n### streaming (concurrency {}, {} chunks x {} ms), all sides\n",
            settings.streaming_concurrency, settings.chunks, settings.chunk_delay_ms
        );
        multi_head(out, &columns);
        summary_row(out, "TTFT p50", &all, |r| ttft_of(r).p50);
        summary_row(out, "TTFT p99", &all, |r| ttft_of(r).p99);
        summary_row(out, "inter-chunk gap p50", &all, |r| gaps_of(r).p50);
        summary_row(out, "inter-chunk gap p99", &all, |r| gaps_of(r).p99);
        summary_row(out, "inter-chunk gap max", &all, |r| gaps_of(r).max);
        summary_row(out, "whole stream p50", &all, |r| latency_of(r).p50);
        let frames: Vec<String> = all
            .iter()
            .map(|r| frames_per_stream(r).map_or_else(|| "n/a".into(), |f| format!("{f:.1}")))
            .collect();
        let _ = writeln!(out, "| SSE frames per stream | {} |", frames.join(" | "));
        multi_counts(out, "streams", &all);
        multi_error_notes(out, &columns, &all);
    }

    for run in &results.streams {
        let all = sides(&run.pair);
        let _ = writeln!(
            out,
            "\n### {} concurrent streams ({} chunks x {} ms), all sides\n",
            run.streams, settings.chunks, settings.chunk_delay_ms
        );
        multi_head(out, &columns);
        multi_counts(out, "streams", &all);
        summary_row(out, "TTFT p99", &all, |r| ttft_of(r).p99);
        summary_row(out, "inter-chunk gap p50", &all, |r| gaps_of(r).p50);
        summary_row(out, "inter-chunk gap p99", &all, |r| gaps_of(r).p99);
        summary_row(out, "inter-chunk gap max", &all, |r| gaps_of(r).max);
        let mut peaks = vec![String::new(), fmt_mib(run.proxy_peak_rss)];
        peaks.extend(run.peer_peak_rss.iter().map(|&p| fmt_mib(p)));
        let _ = writeln!(out, "| gateway peak RSS | {} |", peaks.join(" | "));
        multi_error_notes(out, &columns, &all);
    }

    if let Some(memory) = &results.memory {
        let gateways: Vec<Memory> = std::iter::once(memory.clone())
            .chain(results.peer_memory.iter().cloned())
            .collect();
        let _ = writeln!(out, "\n### memory (RSS), all gateways\n");
        let names = columns.get(1..).unwrap_or_default();
        let _ = writeln!(out, "| when | {} |", names.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(names.len()));
        let line = |what: &str, values: Vec<Option<u64>>| {
            let cells: Vec<String> = values.into_iter().map(fmt_mib).collect();
            format!("| {what} | {} |", cells.join(" | "))
        };
        let _ = writeln!(
            out,
            "{}",
            line(
                "idle after start",
                gateways.iter().map(|m| m.idle).collect()
            )
        );
        for run in &results.streams {
            let mut peaks = vec![run.proxy_peak_rss];
            peaks.extend(run.peer_peak_rss.iter().copied());
            let _ = writeln!(
                out,
                "{}",
                line(&format!("peak during {} streams", run.streams), peaks)
            );
        }
        let _ = writeln!(
            out,
            "{}",
            line(
                "2 s after the load",
                gateways.iter().map(|m| m.after_load).collect()
            )
        );
        let _ = writeln!(
            out,
            "{}",
            line(
                "high-water mark (VmHWM, whole run)",
                gateways.iter().map(|m| m.high_water).collect()
            )
        );
    }
}

/// CPU time per handled request of the proxy and of the mock, from a pair's tick counts.
struct CpuPerRequest {
    proxy_us: f64,
    mock_behind_us: f64,
    mock_direct_us: f64,
}

impl CpuPerRequest {
    fn of(pair: &Pair) -> Option<CpuPerRequest> {
        let per = |ticks: u64, requests: u64| ticks as f64 * crate::cpu::TICK_US / requests as f64;
        let (through, direct) = (pair.proxy.handled(), pair.direct.handled());
        if through == 0 || direct == 0 || pair.proxy.mock_ticks == 0 {
            return None;
        }
        Some(CpuPerRequest {
            proxy_us: per(pair.proxy.server_ticks, through),
            mock_behind_us: per(pair.proxy.mock_ticks, through),
            mock_direct_us: per(pair.direct.server_ticks, direct),
        })
    }

    fn ratio(&self) -> f64 {
        self.proxy_us / self.mock_behind_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::Memory;
    use crate::sysinfo::Machine;

    #[test]
    fn cpu_per_request_divides_ticks_by_every_request_handled() -> anyhow::Result<()> {
        let mut direct = RunResult::empty()?;
        direct.ok = 900;
        direct.warmup_ok = 100;
        direct.server_ticks = 5; // 50 ms over 1,000 requests
        let mut proxy = RunResult::empty()?;
        proxy.ok = 400;
        proxy.errors = 50;
        proxy.warmup_ok = 50;
        proxy.server_ticks = 8; // 80 ms over 500 requests
        proxy.mock_ticks = 4;
        let pair = Pair {
            direct,
            proxy,
            off: None,
            peers: Vec::new(),
        };
        let cpu = CpuPerRequest::of(&pair).ok_or_else(|| anyhow::anyhow!("no ticks counted"))?;
        assert_eq!(cpu.proxy_us, 160.0);
        assert_eq!(cpu.mock_behind_us, 80.0);
        assert_eq!(cpu.mock_direct_us, 50.0);
        assert_eq!(cpu.ratio(), 2.0);
        Ok(())
    }

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
            latency: Some(Pair {
                direct,
                proxy,
                off: None,
                peers: Vec::new(),
            }),
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

    #[test]
    fn modes_on_off_get_columns_and_a_cost_line() -> anyhow::Result<()> {
        let side = |us: u64, ok: u64| -> anyhow::Result<RunResult> {
            let mut result = RunResult::empty()?;
            for _ in 0..ok {
                result.latency.saturating_record(us);
            }
            result.ok = ok;
            result.elapsed = std::time::Duration::from_secs(1);
            Ok(result)
        };
        let mut settings = Settings::new(true);
        settings.off = true;
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
            latency: Some(Pair {
                direct: side(100, 100)?,
                proxy: side(180, 100)?,
                off: Some(side(150, 100)?),
                peers: Vec::new(),
            }),
            throughput: Some(Pair {
                direct: side(100, 1000)?,
                proxy: side(180, 500)?,
                off: Some(side(150, 800)?),
                peers: Vec::new(),
            }),
            ..Results::default()
        };
        let report = render(&settings, &machine, &results);
        assert!(report.contains("## Accounting and store: proxy on vs off"));
        assert!(report.contains("| metric | direct | proxy (on) | proxy-off |"));
        assert!(report.contains("| latency p50 | 100 µs | 180 µs (+80 µs) | 150 µs (+50 µs) |"));
        assert!(report.contains("| requests/s | 1000 | 500 (50.0%) | 800 (80.0%) |"));
        assert!(report.contains("+30 µs at p50, +30 µs at p99 (c=1)"));
        assert!(report.contains("-300 requests/s (-37.5%) at c=50"));
        Ok(())
    }

    #[test]
    fn frontier_table_names_the_best_rate_per_bound() -> anyhow::Result<()> {
        use crate::scenarios::FrontierStep;
        let side = |us: u64, ok: u64| -> anyhow::Result<RunResult> {
            let mut result = RunResult::empty()?;
            for _ in 0..ok {
                result.latency.saturating_record(us);
            }
            result.ok = ok;
            result.elapsed = std::time::Duration::from_secs(1);
            Ok(result)
        };
        let mut settings = Settings::new(false);
        settings.scenarios = vec![Scenario::Frontier];
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
            frontier: vec![
                FrontierStep {
                    concurrency: 1,
                    direct: side(200, 4_000)?,
                    proxy: side(400, 2_000)?,
                },
                FrontierStep {
                    concurrency: 8,
                    direct: side(3_000, 9_000)?,
                    proxy: side(6_000, 5_000)?,
                },
            ],
            ..Results::default()
        };
        let report = render(&settings, &machine, &results);
        assert!(report.contains("| 8 | 9000 | 3.00 ms | 0 | 5000 | 6.00 ms | 0 |"));
        assert!(report.contains("| 1.00 ms | 4000 (c=1) | 2000 (c=1) | 50.0% |"));
        assert!(report.contains("| 5.00 ms | 9000 (c=8) | 2000 (c=1) | 22.2% |"));
        assert!(report.contains("| 10.00 ms | 9000 (c=8) | 5000 (c=8) | 55.6% |"));
        Ok(())
    }

    #[test]
    fn peers_get_columns_and_failures_are_reported() -> anyhow::Result<()> {
        use crate::peers::{Peer, PeerReport};
        let side = |us: u64, ok: u64| -> anyhow::Result<RunResult> {
            let mut result = RunResult::empty()?;
            for _ in 0..ok {
                result.latency.saturating_record(us);
            }
            result.ok = ok;
            result.elapsed = std::time::Duration::from_secs(1);
            Ok(result)
        };
        let mut settings = Settings::new(true);
        settings.peers = vec![Peer::Litellm, Peer::Portkey];
        let machine = Machine {
            cpu: "Test CPU".into(),
            cores: 2,
            kernel: "6.0".into(),
            memory: "24.0 GiB".into(),
            date: "2024-01-01 00:00:00 UTC".into(),
            rustc: "rustc 1.95.0".into(),
            commit: "abc1234".into(),
        };
        let measured = PeerReport {
            peer: Peer::Litellm,
            version: "litellm 9.9.9".into(),
            install: "installed".into(),
            config: vec!["no database".into()],
            config_file: Some(("peers/litellm-config.yaml".into(), "yaml", "a: 1\n".into())),
            command: "litellm --port 1".into(),
            requests: "POST".into(),
            notes: Vec::new(),
            failure: None,
        };
        let failed = PeerReport {
            peer: Peer::Portkey,
            failure: Some("could not be installed: npm failed".into()),
            version: String::new(),
            install: String::new(),
            config: Vec::new(),
            config_file: None,
            command: String::new(),
            requests: String::new(),
            notes: Vec::new(),
        };
        let results = Results {
            throughput: Some(Pair {
                direct: side(100, 1000)?,
                proxy: side(180, 500)?,
                off: None,
                peers: vec![side(2_100, 100)?],
            }),
            peers: vec!["litellm".into()],
            peer_reports: vec![measured, failed],
            ..Results::default()
        };
        let report = render(&settings, &machine, &results);
        assert!(report.contains("## Peers side by side"));
        assert!(report.contains("| metric | direct | kimi-proxy | litellm |"));
        assert!(report.contains("| requests/s | 1000 | 500 (50.0%) | 100 (10.0%) |"));
        assert!(report.contains("| latency p50 | 100 µs | 180 µs (+80 µs) | 2.10 ms (+2.00 ms) |"));
        assert!(report.contains("| litellm | n/a | n/a | 10.0% | n/a | n/a | n/a |"));
        assert!(report.contains("- **not measured**: could not be installed: npm failed"));
        assert!(report.contains("```yaml\na: 1\n```"));
        Ok(())
    }
}
