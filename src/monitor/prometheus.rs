//! `/metrics` in the Prometheus text exposition format. Histograms use fixed bucket bounds (seconds) so they can be
//! aggregated across instances; the buckets are read from the since-start HDR histograms.

use std::fmt::Write;

use super::{Metric, Monitor};

/// Bucket upper bounds in microseconds: 50 µs to 60 s.
const BOUNDS_US: [u64; 20] = [
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
];

/// Extra gauges the caller knows about (open streams, store queue…): (name, help, value).
pub type Gauge<'a> = (&'a str, &'a str, f64);

pub fn render(monitor: &Monitor, gauges: &[Gauge<'_>]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    monitor.with_totals(|histograms, requests, errors| {
        let _ = writeln!(
            out,
            "# HELP kimi_proxy_requests_total Proxied chat requests that finished."
        );
        let _ = writeln!(out, "# TYPE kimi_proxy_requests_total counter");
        let _ = writeln!(out, "kimi_proxy_requests_total {requests}");
        let _ = writeln!(
            out,
            "# HELP kimi_proxy_request_errors_total Requests that ended in an error, by kind."
        );
        let _ = writeln!(out, "# TYPE kimi_proxy_request_errors_total counter");
        for (kind, n) in errors {
            let _ = writeln!(
                out,
                "kimi_proxy_request_errors_total{{kind=\"{}\"}} {n}",
                escape(kind)
            );
        }
        let mut announced: Vec<Metric> = Vec::new();
        for (metric, label, histogram) in histograms {
            let name = format!("kimi_proxy_{}_seconds", metric.name());
            if !announced.contains(&metric) {
                announced.push(metric);
                let _ = writeln!(out, "# HELP {name} {} (seconds).", help(metric));
                let _ = writeln!(out, "# TYPE {name} histogram");
            }
            let labels = match label {
                Some(label) => {
                    let (provider, model) = label.split_once('/').unwrap_or((label, ""));
                    format!(
                        "provider=\"{}\",model=\"{}\",",
                        escape(provider),
                        escape(model)
                    )
                }
                None => String::new(),
            };
            for bound in BOUNDS_US {
                let count = histogram.count_between(0, bound);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels}le=\"{}\"}} {count}",
                    seconds(bound)
                );
            }
            let total = histogram.len();
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {total}");
            let sum = histogram.mean() * total as f64 / 1e6;
            let labels = labels.trim_end_matches(',');
            let braces = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(out, "{name}_sum{braces} {sum}");
            let _ = writeln!(out, "{name}_count{braces} {total}");
        }
    });
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// `kimi_proxy_instance_info{instance="…"} 1` (join other series on it) and whether this instance is the
/// fleet's alert leader.
pub fn instance_info(out: &mut String, instance: &str, leader: bool) {
    let _ = writeln!(
        out,
        "# HELP kimi_proxy_instance_info This instance's id ([cluster] instance_id)."
    );
    let _ = writeln!(out, "# TYPE kimi_proxy_instance_info gauge");
    let _ = writeln!(
        out,
        "kimi_proxy_instance_info{{instance=\"{}\"}} 1",
        escape(instance)
    );
    let _ = writeln!(
        out,
        "# HELP kimi_proxy_fleet_leader 1 while this instance evaluates and fires alerts for the fleet."
    );
    let _ = writeln!(out, "# TYPE kimi_proxy_fleet_leader gauge");
    let _ = writeln!(out, "kimi_proxy_fleet_leader {}", u8::from(leader));
}

fn help(metric: Metric) -> &'static str {
    match metric {
        Metric::Latency => "Request arrival to the last byte sent to the client",
        Metric::Overhead => "Time spent in the proxy itself, upstream excluded",
        Metric::Ttft => "Request arrival to the first body byte sent to the client",
        Metric::InterChunkGap => "Gap between successive frames of a stream",
        Metric::Upstream => "Request sent upstream to the upstream's response headers",
        Metric::Counting => "Counting a prompt's tokens",
        Metric::StoreBatch => "Writing one batch to the store",
        Metric::Broadcast => "Fanning one event out to the dashboards",
        Metric::Delivery => "An event's publication to its bytes written into a dashboard's socket",
    }
}

fn seconds(us: u64) -> String {
    let s = us as f64 / 1e6;
    format!("{s}")
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_with_inf() {
        let monitor = Monitor::new();
        for v in [40, 80, 400, 4_000, 40_000] {
            monitor.record(Metric::InterChunkGap, v);
        }
        let text = render(
            &monitor,
            &[("kimi_proxy_open_streams", "Streams open now.", 3.0)],
        );
        assert!(
            text.contains("kimi_proxy_inter_chunk_gap_seconds_bucket{le=\"0.00005\"} 1"),
            "{text}"
        );
        assert!(text.contains("kimi_proxy_inter_chunk_gap_seconds_bucket{le=\"0.0001\"} 2"));
        assert!(text.contains("kimi_proxy_inter_chunk_gap_seconds_bucket{le=\"+Inf\"} 5"));
        assert!(text.contains("kimi_proxy_inter_chunk_gap_seconds_count 5"));
        assert!(text.contains("# TYPE kimi_proxy_latency_seconds histogram"));
        assert!(text.contains("kimi_proxy_open_streams 3"));
    }
}
