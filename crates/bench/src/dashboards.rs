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
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::loadgen::{self, RunResult, Spec, Summary};
use crate::report::fmt_us;
use crate::scenarios::{PATH, Settings, Targets};

/// Dashboards connected in the loaded phases.
pub const DASHBOARDS: usize = 100;
/// Concurrent streams driving the proxy meanwhile.
const STREAMS: usize = 50;
/// Between the connection burst's end (its streams done) and the measured window.
const SETTLE: Duration = Duration::from_millis(500);
/// Longest wait for every dashboard's `init` snapshot.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes a dashboard reads at once: tungstenite zeroes this much on every read attempt, and its default (128 KiB)
/// made the readers take CPU from the proxy they measure; a larger message (the `init` snapshot) still arrives, in
/// several reads.
const READ_BUFFER: usize = 8 * 1024;
const INIT_PREFIX: &str = "{\"type\":\"init\"";

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
    /// The dashboards connecting, before the measured window (phases with dashboards).
    pub burst: Option<Burst>,
    /// The proxy's CPU time while the measured streams ran, as a share of the whole machine (all cores).
    pub proxy_cpu: Option<f64>,
}

/// The connection burst: every dashboard connecting at once while streams run, up to the measured window.
#[derive(Clone, Debug)]
pub struct Burst {
    /// Inter-chunk gaps of the streams running while the dashboards connected.
    pub gaps: Histogram<u64>,
    /// From the start of each dashboard's TCP connect to its `init` snapshot received.
    pub time_to_init: Option<Summary>,
    /// Delivery of the events published from the first connect to the measured window.
    pub delivery: Option<Summary>,
    pub events: u64,
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
                targets.proxy.pid,
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

/// What the dashboards' thread and the phase share.
struct Shared {
    stop: AtomicBool,
    /// The last `slow_clients_cut` a stats event reported (`u64::MAX`: none seen).
    slow_cut: AtomicU64,
    /// Events published (their `ts`, ms) from here on belong to the measured window; before it, to the burst.
    measured_from_ms: AtomicU64,
}

/// What the dashboards saw over a phase.
struct Watched {
    time_to_init: Histogram<u64>,
    burst: Histogram<u64>,
    steady: Histogram<u64>,
    readers_cut: u64,
}

async fn phase(
    proxy: SocketAddr,
    pid: u32,
    spec: &Spec,
    label: &str,
    dashboards: usize,
    stalled: bool,
    threads: usize,
) -> anyhow::Result<Phase> {
    if dashboards == 0 && !stalled {
        let (proxy_result, proxy_cpu) = measured_load(pid, spec).await;
        return Ok(Phase {
            label: label.into(),
            dashboards,
            proxy: proxy_result?,
            delivery: None,
            events: 0,
            readers_cut: 0,
            slow_clients_cut: None,
            hub: None,
            burst: None,
            proxy_cpu,
        });
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        slow_cut: AtomicU64::new(u64::MAX),
        measured_from_ms: AtomicU64::new(u64::MAX),
    });
    // The connection burst happens under load: the dashboards connect once every stream of a first run is open
    // (the stagger has passed), and that run goes on while their snapshots are built and sent.
    let hub_burst = hub_buckets(proxy).await;
    let burst_load = tokio::spawn(loadgen::run(Spec {
        requests: STREAMS as u64,
        ..spec.clone()
    }));
    tokio::time::sleep(spec.stagger).await;
    // The dashboards run on a runtime of their own (`threads` threads), so that reading them does not delay the
    // load generator, and the load generator's work does not show up as delivery latency.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let watcher = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("dashboards".into())
            .spawn(move || -> anyhow::Result<Watched> {
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
                runtime.block_on(watch(proxy, dashboards, stalled, shared, ready_tx))
            })
            .context("cannot start the dashboards thread")?
    };
    // Ready: every dashboard has its `init` snapshot.
    let ready = tokio::task::spawn_blocking(move || ready_rx.recv()).await?;
    let burst_result = burst_load.await?;
    match ready {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            shared.stop.store(true, Ordering::Relaxed);
            return Err(err);
        }
        Err(_) => {
            let ended = tokio::task::spawn_blocking(move || watcher.join()).await?;
            return Err(match ended {
                Ok(Err(err)) => err.context("the dashboards thread ended early"),
                _ => anyhow::anyhow!("the dashboards thread ended early"),
            });
        }
    }
    let burst_result = match burst_result {
        Ok(result) => result,
        Err(err) => {
            shared.stop.store(true, Ordering::Relaxed);
            return Err(err);
        }
    };
    tokio::time::sleep(SETTLE).await;
    let hub_steady = hub_buckets(proxy).await;
    shared
        .measured_from_ms
        .store(now_us() / 1000, Ordering::Release);
    let (result, proxy_cpu) = measured_load(pid, spec).await;
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let watched = tokio::task::spawn_blocking(move || watcher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the dashboards thread panicked"))??;
    let proxy_result = result?;
    let hub_end = hub_buckets(proxy).await;
    let between = |before: &Option<Buckets>, after: &Option<Buckets>| match (before, after) {
        (Some(before), Some(after)) => Some(Buckets::between(before, after)),
        _ => None,
    };
    let cut = shared.slow_cut.load(Ordering::Relaxed);
    let summary = |h: &Histogram<u64>| (!h.is_empty()).then(|| Summary::of(h));
    Ok(Phase {
        label: label.into(),
        dashboards,
        proxy: proxy_result,
        delivery: summary(&watched.steady),
        events: watched.steady.len(),
        readers_cut: watched.readers_cut,
        slow_clients_cut: (cut != u64::MAX).then_some(cut),
        hub: between(&hub_steady, &hub_end),
        burst: Some(Burst {
            gaps: burst_result.gaps,
            time_to_init: summary(&watched.time_to_init),
            delivery: summary(&watched.burst),
            events: watched.burst.len(),
            hub: between(&hub_burst, &hub_steady),
        }),
        proxy_cpu,
    })
}

/// The measured streams, and the proxy's share of the machine's CPU while they ran.
async fn measured_load(pid: u32, spec: &Spec) -> (anyhow::Result<RunResult>, Option<f64>) {
    let before = crate::cpu::Snapshot::take(&[pid]);
    let result = loadgen::run(spec.clone()).await;
    let after = crate::cpu::Snapshot::take(&[pid]);
    let share = before
        .zip(after)
        .and_then(|(before, after)| before.usage_until(&after))
        .map(|usage| usage.ours);
    (result, share)
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
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (socket, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    Ok(socket)
}

/// Connects the stalled dashboard (if any), then all the others at once; reports ready when every one has its
/// `init` snapshot, and collects what they read until `stop`.
async fn watch(
    proxy: SocketAddr,
    dashboards: usize,
    stalled: bool,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<Watched> {
    let url = format!("ws://{proxy}/ws");
    // The stalled client: a small receive buffer, a handshake, then nothing read ever again.
    let _stalled = if stalled {
        match connect(proxy, &url, Some(4096)).await {
            Ok(socket) => Some(socket),
            Err(err) => {
                let _ = ready.send(Err(anyhow::anyhow!(
                    "stalled dashboard connect failed: {err:#}"
                )));
                return Err(err);
            }
        }
    } else {
        None
    };
    let (init_tx, mut init_rx) = tokio::sync::mpsc::channel(dashboards.max(1));
    let mut readers = Vec::with_capacity(dashboards);
    for _ in 0..dashboards {
        readers.push(tokio::spawn(dashboard(
            proxy,
            url.clone(),
            Arc::clone(&shared),
            init_tx.clone(),
        )));
    }
    drop(init_tx);
    let mut time_to_init = loadgen::histogram()?;
    let deadline = tokio::time::Instant::now() + INIT_TIMEOUT;
    while time_to_init.len() < dashboards as u64 {
        let failure = match tokio::time::timeout_at(deadline, init_rx.recv()).await {
            Ok(Some(Ok(us))) => {
                time_to_init.saturating_record(us.max(1));
                continue;
            }
            Ok(Some(Err(err))) => err,
            Ok(None) => anyhow::anyhow!("a dashboard ended before its snapshot"),
            Err(_) => anyhow::anyhow!(
                "{} of {dashboards} dashboards had no snapshot after {INIT_TIMEOUT:?}",
                dashboards as u64 - time_to_init.len()
            ),
        };
        let _ = ready.send(Err(anyhow::anyhow!("{failure:#}")));
        return Err(failure);
    }
    let _ = ready.send(Ok(()));
    let mut watched = Watched {
        time_to_init,
        burst: loadgen::histogram()?,
        steady: loadgen::histogram()?,
        readers_cut: 0,
    };
    for reader in readers {
        let read = reader.await??;
        watched.burst.add(&read.burst)?;
        watched.steady.add(&read.steady)?;
        watched.readers_cut += u64::from(read.cut);
    }
    Ok(watched)
}

/// What one dashboard read after its snapshot.
struct Read {
    burst: Histogram<u64>,
    steady: Histogram<u64>,
    cut: bool,
}

/// One dashboard: connects, reads its `init` (reporting the time from the start of the TCP connect), then every
/// event until `stop`, each delivery counted in the window its event was published in.
async fn dashboard(
    proxy: SocketAddr,
    url: String,
    shared: Arc<Shared>,
    init: tokio::sync::mpsc::Sender<anyhow::Result<u64>>,
) -> anyhow::Result<Read> {
    let began = std::time::Instant::now();
    let mut socket = match connect(proxy, &url, None).await {
        Ok(socket) => socket,
        Err(err) => {
            let _ = init
                .send(Err(err.context("dashboard connect failed")))
                .await;
            anyhow::bail!("dashboard connect failed");
        }
    };
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with(INIT_PREFIX) => break,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                let _ = init
                    .send(Err(anyhow::anyhow!(
                        "a dashboard was disconnected before its snapshot"
                    )))
                    .await;
                anyhow::bail!("dashboard disconnected before its snapshot");
            }
            Some(Ok(_)) => {}
        }
    }
    let elapsed = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
    let _ = init.send(Ok(elapsed)).await;
    drop(init);
    let mut read = Read {
        burst: loadgen::histogram()?,
        steady: loadgen::histogram()?,
        cut: false,
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), socket.next()).await;
        let message = match next {
            Err(_) => continue,
            Ok(None) | Ok(Some(Err(_))) => {
                read.cut = true;
                break;
            }
            Ok(Some(Ok(message))) => message,
        };
        let Message::Text(text) = message else {
            if matches!(message, Message::Close(_)) {
                read.cut = true;
                break;
            }
            continue;
        };
        let received = now_us();
        if text.starts_with(INIT_PREFIX) {
            continue;
        }
        if text.starts_with("{\"type\":\"stats\"")
            && let Some(n) = slow_clients_cut(&text)
        {
            shared.slow_cut.store(n, Ordering::Relaxed);
        }
        if let Some(ts_ms) = event_ts(&text) {
            let delivery = received.saturating_sub(ts_ms * 1000).max(1);
            if ts_ms >= shared.measured_from_ms.load(Ordering::Acquire) {
                read.steady.saturating_record(delivery);
            } else {
                read.burst.saturating_record(delivery);
            }
        }
    }
    Ok(read)
}

/// A summary's p50, p99 and max, or dashes.
fn three(summary: Option<Summary>) -> (String, String, String) {
    summary.map_or(
        ("–".to_string(), "–".to_string(), "–".to_string()),
        |d| (fmt_us(d.p50), fmt_us(d.p99), fmt_us(d.max)),
    )
}

/// A bucket bound of the hub's histogram, or a dash.
fn bound(hub: Option<&Buckets>, q: f64) -> String {
    hub.and_then(|b| b.quantile_bound(q))
        .map_or("–".to_string(), |us| format!("≤ {}", fmt_us(us)))
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
         (its `dashboard_delivery` histogram; this window's share of the `/metrics` buckets, so the figure is a \
         bucket bound). \"proxy CPU\" is the proxy process's CPU time while the measured streams ran, as a share of \
         the whole machine (all cores). The stalled client completes the handshake with a 4 KiB receive buffer and never reads. \
         Target: delivery p99 ≤ 10 ms, proxy TTFT and gap unchanged within noise.\n\n\
         In a phase with dashboards, they connect first, all at once, while {STREAMS} streams run (the connection \
         burst, second table); the measured window (first table) starts once every dashboard has its `init` \
         snapshot, those streams have ended and {} ms have passed, and counts the events published from then on.\n",
        settings.dashboard_threads,
        if settings.dashboard_threads == 1 {
            ""
        } else {
            "s"
        },
        SETTLE.as_millis(),
    );
    let _ = writeln!(
        out,
        "| phase | streams ok / errors | TTFT p50 | TTFT p99 | gap p99 | proxy CPU | events delivered | delivery p50 | delivery p99 | delivery max | hub p50 | hub p99 | readers cut | slow clients cut |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for phase in phases {
        let ttft = Summary::of(&phase.proxy.ttft);
        let gaps = Summary::of(&phase.proxy.gaps);
        let (d50, d99, dmax) = three(phase.delivery);
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            phase.label,
            phase.proxy.ok,
            phase.proxy.errors,
            fmt_us(ttft.p50),
            fmt_us(ttft.p99),
            fmt_us(gaps.p99),
            phase
                .proxy_cpu
                .map_or("–".to_string(), |share| format!("{:.1} %", share * 100.0)),
            phase.events,
            d50,
            d99,
            dmax,
            bound(phase.hub.as_ref(), 0.5),
            bound(phase.hub.as_ref(), 0.99),
            phase.readers_cut,
            phase
                .slow_clients_cut
                .map_or("–".to_string(), |n| n.to_string()),
        );
    }
    if phases.iter().all(|p| p.burst.is_none()) {
        return;
    }
    let _ = writeln!(
        out,
        "\nThe connection burst: time to `init` runs from the start of a dashboard's TCP connect to its snapshot \
         received; the gap is that of the streams running meanwhile; delivery counts the events published from \
         the first connect to the measured window (the burst's own streams finishing and the settling time \
         included).\n"
    );
    let _ = writeln!(
        out,
        "| phase | time to init p50 | time to init p99 | time to init max | gap p99 | events delivered | delivery p50 | delivery p99 | delivery max | hub p50 | hub p99 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for phase in phases {
        let Some(burst) = &phase.burst else {
            continue;
        };
        let (i50, i99, imax) = three(burst.time_to_init);
        let (d50, d99, dmax) = three(burst.delivery);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            phase.label,
            i50,
            i99,
            imax,
            fmt_us(Summary::of(&burst.gaps).p99),
            burst.events,
            d50,
            d99,
            dmax,
            bound(burst.hub.as_ref(), 0.5),
            bound(burst.hub.as_ref(), 0.99),
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
