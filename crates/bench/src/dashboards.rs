//! The dashboards scenario: the proxy streaming at load with 0, 100, and 100 + 1 stalled dashboards connected to
//! `/ws`. Measures what the dashboards cost the proxy (TTFT, inter-chunk gap) and how fast events reach them
//! (delivery latency: receive time minus the event's `ts`, both read from the same clock).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::loadgen::{self, RunResult, Spec, Summary};
use crate::report::fmt_us;
use crate::scenarios::{PATH, Settings, Targets};

/// Dashboards connected in the loaded phases.
pub const DASHBOARDS: usize = 100;
/// Concurrent streams driving the proxy meanwhile.
const STREAMS: usize = 50;

/// One phase's figures.
#[derive(Clone, Debug)]
pub struct Phase {
    pub label: String,
    pub dashboards: usize,
    /// The proxy's streams during the phase.
    pub proxy: RunResult,
    /// Event delivery over every reading dashboard (µs; includes < 1 ms of `ts` rounding).
    pub delivery: Option<Summary>,
    pub events: u64,
    /// Reading dashboards the server disconnected (should be 0).
    pub readers_cut: u64,
    /// The hub's count of clients cut off for being slow, at the end of the phase.
    pub slow_clients_cut: Option<u64>,
    /// The proxy's own view of the same deliveries: publication to the bytes written into each client's socket
    /// (its `dashboard_delivery` histogram, this phase's share of the `/metrics` buckets).
    pub hub: Option<Buckets>,
}

/// A phase's share of a Prometheus histogram: (upper bound µs, count) per bucket, not cumulative.
#[derive(Clone, Debug, Default)]
pub struct Buckets(pub Vec<(u64, u64)>);

impl Buckets {
    /// The cumulative buckets of `metric` in a `/metrics` text.
    fn parse(text: &str, metric: &str) -> Buckets {
        let prefix = format!("{metric}_bucket{{le=\"");
        let mut cumulative = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((bound, count)) = rest.split_once("\"} ") else {
                continue;
            };
            // `+Inf` is left out: a value past the last bound has no figure to report.
            if let (Ok(seconds), Ok(count)) = (bound.parse::<f64>(), count.trim().parse::<u64>())
                && seconds.is_finite()
            {
                cumulative.push(((seconds * 1e6).round() as u64, count));
            }
        }
        Buckets(cumulative)
    }

    /// `after - before`, per bucket (both cumulative), as plain counts per bucket.
    fn between(before: &Buckets, after: &Buckets) -> Buckets {
        let mut previous = 0;
        let mut out = Vec::new();
        for (i, &(bound, count)) in after.0.iter().enumerate() {
            let earlier = before.0.get(i).map_or(0, |&(_, c)| c);
            let cumulative = count.saturating_sub(earlier);
            out.push((bound, cumulative.saturating_sub(previous)));
            previous = cumulative;
        }
        Buckets(out)
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|&(_, c)| c).sum()
    }

    /// The upper bound of the bucket holding the `q` quantile (`None` without values or beyond the last bound).
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for &(bound, count) in &self.0 {
            seen += count;
            if seen >= rank {
                return Some(bound);
            }
        }
        None
    }
}

/// The proxy's `dashboard_delivery` buckets now.
async fn hub_buckets(proxy: SocketAddr) -> Option<Buckets> {
    let metrics = loadgen::fetch(proxy, "/metrics", &[], None).await.ok()?;
    let text = std::str::from_utf8(&metrics.body).ok()?;
    let buckets = Buckets::parse(text, "kimi_proxy_dashboard_delivery_seconds");
    (!buckets.0.is_empty()).then_some(buckets)
}

/// Runs the phases: none, 100, 100 + 1 stalled, none again (the repeat shows the drift).
pub async fn run(
    settings: &Settings,
    targets: &Targets,
    body: Bytes,
) -> anyhow::Result<Vec<Phase>> {
    let streams = if settings.quick { 100 } else { 300 };
    let headers = settings.stream_headers()?;
    let spec = Spec {
        addr: targets.proxy.addr,
        path: PATH.into(),
        body,
        headers,
        concurrency: STREAMS,
        requests: streams,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(120),
        request_timeout: Duration::from_secs(30),
        streaming: true,
        stagger: Duration::from_millis(
            u64::from(settings.chunks + 1) * u64::from(settings.chunk_delay_ms),
        ),
        expect: None,
    };
    let mut phases = Vec::new();
    for (label, dashboards, stalled) in [
        ("no dashboard", 0, false),
        ("100 dashboards", DASHBOARDS, false),
        ("100 dashboards + 1 stalled", DASHBOARDS, true),
        ("no dashboard (again)", 0, false),
    ] {
        eprintln!("kimi-bench: dashboards: {label}");
        phases.push(
            phase(
                targets.proxy.addr,
                &spec,
                label,
                dashboards,
                stalled,
                settings.dashboard_threads,
            )
            .await?,
        );
    }
    Ok(phases)
}

async fn phase(
    proxy: SocketAddr,
    spec: &Spec,
    label: &str,
    dashboards: usize,
    stalled: bool,
    threads: usize,
) -> anyhow::Result<Phase> {
    let hub_before = hub_buckets(proxy).await;
    let stop = Arc::new(AtomicBool::new(false));
    let slow_cut = Arc::new(AtomicU64::new(u64::MAX));
    // The dashboards run on a runtime of their own (`threads` threads), so that reading them does not delay the
    // load generator, and the load generator's work does not show up as delivery latency.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let watcher = {
        let stop = Arc::clone(&stop);
        let slow_cut = Arc::clone(&slow_cut);
        std::thread::Builder::new()
            .name("dashboards".into())
            .spawn(move || -> anyhow::Result<(Histogram<u64>, u64, u64)> {
                let runtime = if threads > 1 {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(threads)
                        .enable_all()
                        .build()?
                } else {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                };
                runtime.block_on(watch(proxy, dashboards, stalled, stop, slow_cut, ready_tx))
            })
            .context("cannot start the dashboards thread")?
    };
    match tokio::task::spawn_blocking(move || ready_rx.recv()).await? {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(err),
        Err(_) => anyhow::bail!("the dashboards thread ended early"),
    }
    let result = loadgen::run(spec.clone()).await;
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let watched = tokio::task::spawn_blocking(move || watcher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the dashboards thread panicked"))??;
    let proxy_result = result?;
    let (delivery, events, readers_cut) = watched;
    let hub = match (hub_before, hub_buckets(proxy).await) {
        (Some(before), Some(after)) if dashboards > 0 => Some(Buckets::between(&before, &after)),
        _ => None,
    };
    let cut = slow_cut.load(Ordering::Relaxed);
    Ok(Phase {
        label: label.into(),
        dashboards,
        proxy: proxy_result,
        delivery: (!delivery.is_empty()).then(|| Summary::of(&delivery)),
        events,
        readers_cut,
        slow_clients_cut: (cut != u64::MAX).then_some(cut),
        hub,
    })
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `"ts":N` of an event, without parsing the rest.
fn event_ts(text: &str) -> Option<u64> {
    let start = text.find("\"ts\":")? + 5;
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// `"slow_clients_cut":N` of a stats event.
fn slow_clients_cut(text: &str) -> Option<u64> {
    let start = text.find("\"slow_clients_cut\":")? + 19;
    let digits = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One dashboard connection, TCP_NODELAY like the proxy's side (and with a small receive buffer if asked).
async fn connect(proxy: SocketAddr, url: &str, recv_buffer: Option<u32>) -> anyhow::Result<Socket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let tcp = socket.connect(proxy).await?;
    tcp.set_nodelay(true)?;
    let (socket, _) = tokio_tungstenite::client_async(url, tcp).await?;
    Ok(socket)
}

/// Connects the dashboards (and the stalled one), reports ready, then reads until `stop`.
async fn watch(
    proxy: SocketAddr,
    dashboards: usize,
    stalled: bool,
    stop: Arc<AtomicBool>,
    slow_cut: Arc<AtomicU64>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let url = format!("ws://{proxy}/ws");
    let mut sockets = Vec::with_capacity(dashboards);
    for _ in 0..dashboards {
        match connect(proxy, &url, None).await {
            Ok(socket) => sockets.push(socket),
            Err(err) => {
                let _ = ready.send(Err(anyhow::anyhow!("dashboard connect failed: {err:#}")));
                anyhow::bail!("dashboard connect failed");
            }
        }
    }
    // The stalled client: a small receive buffer, a handshake, then nothing read ever again.
    let _stalled = if stalled {
        Some(connect(proxy, &url, Some(4096)).await?)
    } else {
        None
    };
    let _ = ready.send(Ok(()));
    let mut readers = Vec::with_capacity(dashboards);
    for mut socket in sockets {
        let stop = Arc::clone(&stop);
        let slow_cut = Arc::clone(&slow_cut);
        readers.push(tokio::spawn(async move {
            let mut hist = loadgen::histogram()?;
            let mut events = 0u64;
            let mut cut = false;
            while !stop.load(Ordering::Relaxed) {
                let next = tokio::time::timeout(Duration::from_millis(200), socket.next()).await;
                let message = match next {
                    Err(_) => continue,
                    Ok(None) | Ok(Some(Err(_))) => {
                        cut = true;
                        break;
                    }
                    Ok(Some(Ok(message))) => message,
                };
                let Message::Text(text) = message else {
                    if matches!(message, Message::Close(_)) {
                        cut = true;
                        break;
                    }
                    continue;
                };
                let received = now_us();
                if text.starts_with("{\"type\":\"init\"") {
                    continue;
                }
                if text.starts_with("{\"type\":\"stats\"")
                    && let Some(n) = slow_clients_cut(&text)
                {
                    slow_cut.store(n, Ordering::Relaxed);
                }
                if let Some(ts_ms) = event_ts(&text) {
                    hist.saturating_record(received.saturating_sub(ts_ms * 1000).max(1));
                    events += 1;
                }
            }
            anyhow::Ok((hist, events, cut))
        }));
    }
    let mut all = loadgen::histogram()?;
    let mut events = 0;
    let mut cut = 0;
    for reader in readers {
        let (hist, n, was_cut) = reader.await??;
        all.add(&hist)?;
        events += n;
        cut += u64::from(was_cut);
    }
    Ok((all, events, cut))
}

/// The report's section.
pub fn render(out: &mut String, settings: &Settings, phases: &[Phase]) {
    if phases.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Dashboards: the proxy at load with 100 WebSocket clients\n"
    );
    let _ = writeln!(
        out,
        "{STREAMS} concurrent streams through the proxy (the streaming shape above) while 0, {DASHBOARDS}, and \
         {DASHBOARDS} + 1 stalled dashboard clients are connected to `/ws` (TCP_NODELAY on both ends). The \
         dashboards read every event on a runtime of their own ({} thread{}); delivery = receive time − the \
         event's `ts` (milliseconds, so each figure includes up to 1 ms of rounding). \"hub\" is the proxy's own \
         view of the same deliveries: from publishing the event to its bytes written into each client's socket \
         (its `dashboard_delivery` histogram; this phase's share of the `/metrics` buckets, so the figure is a \
         bucket bound). The stalled client completes the handshake with a 4 KiB receive buffer and never reads. \
         Target: delivery p99 ≤ 10 ms, proxy TTFT and gap unchanged within noise.\n",
        settings.dashboard_threads,
        if settings.dashboard_threads == 1 {
            ""
        } else {
            "s"
        }
    );
    let _ = writeln!(
        out,
        "| phase | streams ok / errors | TTFT p50 | TTFT p99 | gap p99 | events delivered | delivery p50 | delivery p99 | delivery max | hub p50 | hub p99 | readers cut | slow clients cut |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for phase in phases {
        let ttft = Summary::of(&phase.proxy.ttft);
        let gaps = Summary::of(&phase.proxy.gaps);
        let (d50, d99, dmax) = phase.delivery.map_or(
            ("–".to_string(), "–".to_string(), "–".to_string()),
            |d| (fmt_us(d.p50), fmt_us(d.p99), fmt_us(d.max)),
        );
        let bound = |q: f64| {
            phase
                .hub
                .as_ref()
                .and_then(|b| b.quantile_bound(q))
                .map_or("–".to_string(), |us| format!("≤ {}", fmt_us(us)))
        };
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            phase.label,
            phase.proxy.ok,
            phase.proxy.errors,
            fmt_us(ttft.p50),
            fmt_us(ttft.p99),
            fmt_us(gaps.p99),
            phase.events,
            d50,
            d99,
            dmax,
            bound(0.5),
            bound(0.99),
            phase.readers_cut,
            phase
                .slow_clients_cut
                .map_or("–".to_string(), |n| n.to_string()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_without_parsing() {
        let text = r#"{"type":"stats","seq":7,"ts":1767323103000,"data":{"hub":{"lost_events":0,"slow_clients_cut":2}}}"#;
        assert_eq!(event_ts(text), Some(1_767_323_103_000));
        assert_eq!(slow_clients_cut(text), Some(2));
        assert_eq!(event_ts("{}"), None);
    }

    #[test]
    fn phase_buckets_from_prometheus_text() {
        let metric = "kimi_proxy_dashboard_delivery_seconds";
        let before = Buckets::parse(
            &format!(
                "{metric}_bucket{{le=\"0.001\"}} 10\n{metric}_bucket{{le=\"0.01\"}} 10\n{metric}_bucket{{le=\"+Inf\"}} 10\n"
            ),
            metric,
        );
        let after = Buckets::parse(
            &format!(
                "# TYPE x\n{metric}_bucket{{le=\"0.001\"}} 108\n{metric}_bucket{{le=\"0.01\"}} 110\n{metric}_sum 1\n"
            ),
            metric,
        );
        let phase = Buckets::between(&before, &after);
        assert_eq!(phase.0, vec![(1_000, 98), (10_000, 2)]);
        assert_eq!(phase.quantile_bound(0.5), Some(1_000));
        assert_eq!(phase.quantile_bound(0.99), Some(10_000));
        assert_eq!(Buckets::default().quantile_bound(0.5), None);
    }
}
