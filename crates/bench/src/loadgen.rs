//! A closed-loop HTTP/1.1 load generator.
//!
//! Each virtual user (VU) owns one persistent connection (TCP_NODELAY, raw `hyper::client::conn::http1`) and
//! sends its next request only once the previous answer has been read to the end. A run is bounded by a
//! number of measured requests and by a time limit, and every request by a timeout. Requests that start
//! during the warm-up are sent but not recorded.
//!
//! Recorded, in microseconds: the full-response latency of every successful request; for streams also the
//! time to the first body byte (TTFT) and the gap between successive body frames that complete an SSE event.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

/// Highest value a histogram can hold: 10 minutes in microseconds (larger values are clamped).
const HIST_MAX_US: u64 = 600_000_000;
/// Significant figures: 4 keeps 20 ms gaps at ~2 µs resolution.
const HIST_SIGFIG: u8 = 4;
/// How many error messages a run keeps as examples.
const ERROR_SAMPLES: usize = 5;

/// What one run sends and how long it may take.
#[derive(Clone, Debug)]
pub struct Spec {
    pub addr: SocketAddr,
    pub path: String,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Number of VUs (= connections).
    pub concurrency: usize,
    /// Upper bound on measured requests (all VUs together).
    pub requests: u64,
    /// Requests started before this much time has passed are not recorded.
    pub warmup: Duration,
    /// Time limit of the measured phase: no request starts after it.
    pub duration: Duration,
    /// Timeout of one request, from send to the end of its body.
    pub request_timeout: Duration,
    /// Parse the body as SSE: record TTFT and gaps, require `data: [DONE]`.
    pub streaming: bool,
    /// Spread the VUs' first requests evenly over this long (VU i waits i/concurrency of it), so closed-loop
    /// streams of equal length don't run in lockstep waves. Zero: all start together.
    pub stagger: Duration,
    /// What every answer must be (checked after its timing is taken); a mismatch counts as an error.
    pub expect: Option<Arc<Expect>>,
}

/// The answer a run expects: exactly these body bytes, and optionally a response header with this value.
#[derive(Clone, Debug)]
pub struct Expect {
    pub body: Bytes,
    pub header: Option<(HeaderName, HeaderValue)>,
}

impl Expect {
    /// Why `headers` and `body` are not the expected answer, if they are not.
    fn mismatch(&self, headers: &http::HeaderMap, body: &[u8]) -> Option<String> {
        if let Some((name, value)) = &self.header
            && headers.get(name) != Some(value)
        {
            return Some(format!(
                "header {name} is {:?}, expected {value:?}",
                headers.get(name)
            ));
        }
        (body != self.body.as_ref()).then(|| {
            format!(
                "body differs from the expected answer ({} bytes, expected {})",
                body.len(),
                self.body.len()
            )
        })
    }
}

/// A fresh histogram with the crate's bounds.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG)?)
}

fn histogram_of(samples: &[u64]) -> anyhow::Result<Histogram<u64>> {
    let mut hist = histogram()?;
    for &value in samples {
        hist.saturating_record(value);
    }
    Ok(hist)
}

/// Percentiles of one metric, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Summary {
    pub fn of(hist: &Histogram<u64>) -> Summary {
        if hist.is_empty() {
            return Summary::default();
        }
        Summary {
            count: hist.len(),
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
            mean: hist.mean(),
        }
    }
}

/// The outcome of one run (or of several runs merged).
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Full response read, successful measured requests.
    pub latency: Histogram<u64>,
    /// Time to the first body byte (streams only).
    pub ttft: Histogram<u64>,
    /// Gaps between successive event-carrying body frames (streams only).
    pub gaps: Histogram<u64>,
    pub ok: u64,
    /// Measured requests that failed: non-200, connection or body errors, timeouts, truncated streams.
    pub errors: u64,
    /// Failures during the warm-up (not in `errors`).
    pub warmup_errors: u64,
    /// Successful warm-up requests (not in `ok`): with `ok` and the errors, every request the servers handled.
    pub warmup_ok: u64,
    /// CPU time (clock ticks, from /proc) the side's server and the mock behind it spent during the run
    /// (filled in by the scenario, which knows the processes).
    pub server_ticks: u64,
    pub mock_ticks: u64,
    /// Measured phase, from its start to the last measured completion (summed over merged runs).
    pub elapsed: Duration,
    pub error_samples: Vec<String>,
}

impl RunResult {
    pub fn empty() -> anyhow::Result<RunResult> {
        Ok(RunResult {
            latency: histogram()?,
            ttft: histogram()?,
            gaps: histogram()?,
            ok: 0,
            errors: 0,
            warmup_errors: 0,
            warmup_ok: 0,
            server_ticks: 0,
            mock_ticks: 0,
            elapsed: Duration::ZERO,
            error_samples: Vec::new(),
        })
    }

    pub fn merge(&mut self, other: &RunResult) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.ttft.add(&other.ttft)?;
        self.gaps.add(&other.gaps)?;
        self.ok += other.ok;
        self.errors += other.errors;
        self.warmup_errors += other.warmup_errors;
        self.warmup_ok += other.warmup_ok;
        self.server_ticks += other.server_ticks;
        self.mock_ticks += other.mock_ticks;
        self.elapsed += other.elapsed;
        for sample in &other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(sample) {
                self.error_samples.push(sample.clone());
            }
        }
        Ok(())
    }

    /// Merges a run that went on at the same time as this one (the load spread over several servers): the
    /// counts add up, but the measured time is the longer of the two, so `rps` is the aggregate rate.
    pub fn merge_concurrent(&mut self, other: &RunResult) -> anyhow::Result<()> {
        let longer = self.elapsed.max(other.elapsed);
        self.merge(other)?;
        self.elapsed = longer;
        Ok(())
    }

    /// Every request the servers handled in the runs merged here, warm-up included.
    pub fn handled(&self) -> u64 {
        self.ok + self.errors + self.warmup_ok + self.warmup_errors
    }

    /// Successful requests per second of measured time.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }
}

/// What one VU collected.
#[derive(Default)]
struct VuRecord {
    latency: Vec<u64>,
    ttft: Vec<u64>,
    gaps: Vec<u64>,
    ok: u64,
    errors: u64,
    warmup_errors: u64,
    warmup_ok: u64,
    last_done: Option<Instant>,
    error_samples: Vec<String>,
}

impl VuRecord {
    fn error(&mut self, measured: bool, message: String) {
        if measured {
            self.errors += 1;
            if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&message) {
                self.error_samples.push(message);
            }
        } else {
            self.warmup_errors += 1;
        }
    }
}

/// Timings of one successful request.
struct Timings {
    total: Duration,
    ttft: Option<Duration>,
    gaps: Vec<u64>,
}

/// Shared clock of a run, fixed by the first VU past the start barrier.
struct Clock {
    measure_start: Instant,
    deadline: Instant,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs `spec` to completion: connects every VU, starts them together, waits for all of them.
pub async fn run(spec: Spec) -> anyhow::Result<RunResult> {
    let spec = Arc::new(spec);
    let concurrency = spec.concurrency.max(1);
    let barrier = Arc::new(Barrier::new(concurrency));
    let clock = Arc::new(OnceLock::new());
    let tickets = Arc::new(AtomicU64::new(0));
    let ranks = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let spec = Arc::clone(&spec);
        let barrier = Arc::clone(&barrier);
        let clock = Arc::clone(&clock);
        let tickets = Arc::clone(&tickets);
        let ranks = Arc::clone(&ranks);
        handles.push(tokio::spawn(async move {
            virtual_user(spec, barrier, clock, tickets, ranks).await
        }));
    }
    let mut records = Vec::with_capacity(concurrency);
    for handle in handles {
        records.push(handle.await?);
    }

    let mut result = RunResult::empty()?;
    let measure_start = clock.get().map(|c: &Clock| c.measure_start);
    let mut last_done: Option<Instant> = None;
    for record in &records {
        result.latency.add(histogram_of(&record.latency)?)?;
        result.ttft.add(histogram_of(&record.ttft)?)?;
        result.gaps.add(histogram_of(&record.gaps)?)?;
        result.ok += record.ok;
        result.errors += record.errors;
        result.warmup_errors += record.warmup_errors;
        result.warmup_ok += record.warmup_ok;
        last_done = last_done.max(record.last_done);
        for sample in &record.error_samples {
            if result.error_samples.len() < ERROR_SAMPLES && !result.error_samples.contains(sample)
            {
                result.error_samples.push(sample.clone());
            }
        }
    }
    if let (Some(start), Some(end)) = (measure_start, last_done) {
        result.elapsed = end.saturating_duration_since(start);
    }
    Ok(result)
}

async fn virtual_user(
    spec: Arc<Spec>,
    barrier: Arc<Barrier>,
    clock: Arc<OnceLock<Clock>>,
    tickets: Arc<AtomicU64>,
    barrier_rank: Arc<AtomicU64>,
) -> VuRecord {
    let mut record = VuRecord::default();
    // Connect before the start line so that all VUs begin together.
    let mut sender = match connect(spec.addr).await {
        Ok(sender) => Some(sender),
        Err(err) => {
            record.error(spec.warmup.is_zero(), err);
            None
        }
    };
    let rank = barrier_rank.fetch_add(1, Ordering::Relaxed);
    barrier.wait().await;
    let clock = clock.get_or_init(|| {
        let now = Instant::now();
        Clock {
            measure_start: now + spec.warmup,
            deadline: now + spec.warmup + spec.duration,
        }
    });
    if !spec.stagger.is_zero() {
        let share = spec.stagger.as_secs_f64() * rank as f64 / spec.concurrency.max(1) as f64;
        tokio::time::sleep(Duration::from_secs_f64(share)).await;
    }

    loop {
        let now = Instant::now();
        if now >= clock.deadline {
            break;
        }
        let measured = now >= clock.measure_start;
        if measured && tickets.fetch_add(1, Ordering::Relaxed) >= spec.requests {
            break;
        }
        let mut conn = match sender.take() {
            Some(conn) if !conn.is_closed() => conn,
            _ => match connect(spec.addr).await {
                Ok(conn) => conn,
                Err(err) => {
                    record.error(measured, err);
                    // Don't spin on a refused connection; the loop stays bounded by tickets and the deadline.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(spec.request_timeout, one_request(&mut conn, &spec, started))
                .await;
        let done = Instant::now();
        match outcome {
            Ok(Ok(timings)) => {
                sender = Some(conn);
                if measured {
                    record.ok += 1;
                    record.last_done = Some(done);
                    record.latency.push(micros(timings.total));
                    if let Some(ttft) = timings.ttft {
                        record.ttft.push(micros(ttft));
                    }
                    record.gaps.extend_from_slice(&timings.gaps);
                } else {
                    record.warmup_ok += 1;
                }
            }
            Ok(Err(err)) => {
                // The connection may be in any state: drop it and reconnect for the next request.
                if measured {
                    record.last_done = Some(done);
                }
                record.error(measured, err);
            }
            Err(_) => {
                if measured {
                    record.last_done = Some(done);
                }
                record.error(
                    measured,
                    format!("timed out after {:?}", spec.request_timeout),
                );
            }
        }
    }
    record
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One answer read whole, for setting up and checking a scenario (not timed).
pub struct Fetched {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Sends one request on a fresh connection and reads the whole answer (`body` `None`: a GET).
pub async fn fetch(
    addr: SocketAddr,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: Option<Bytes>,
) -> anyhow::Result<Fetched> {
    let mut sender = connect(addr).await.map_err(anyhow::Error::msg)?;
    sender.ready().await?;
    let mut builder = Request::builder()
        .method(if body.is_some() {
            Method::POST
        } else {
            Method::GET
        })
        .uri(path)
        .header(HOST, addr.to_string());
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let request = builder.body(Full::new(body.unwrap_or_default()))?;
    let response = tokio::time::timeout(Duration::from_secs(15), async {
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    })
    .await??;
    Ok(response)
}

async fn one_request(
    sender: &mut SendRequest<Full<Bytes>>,
    spec: &Spec,
    started: Instant,
) -> Result<Timings, String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(spec.path.as_str())
        .header(HOST, spec.addr.to_string())
        .header(CONTENT_TYPE, "application/json");
    for (name, value) in &spec.headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(spec.body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let (parts, mut body) = response.into_parts();
    let mut kept = Vec::new();

    let mut sse = SseScan::default();
    let mut ttft = None;
    let mut last_event: Option<Instant> = None;
    let mut gaps = Vec::new();
    let mut error_body = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let now = Instant::now();
        if ttft.is_none() {
            ttft = Some(now.saturating_duration_since(started));
        }
        if status != StatusCode::OK {
            let room = 200usize.saturating_sub(error_body.len());
            error_body.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
            continue;
        }
        if spec.expect.is_some() {
            kept.extend_from_slice(&data);
        }
        if spec.streaming && sse.feed(&data) > 0 {
            if let Some(previous) = last_event {
                gaps.push(micros(now.saturating_duration_since(previous)));
            }
            last_event = Some(now);
        }
    }
    let total = started.elapsed();
    if status != StatusCode::OK {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&error_body).trim()
        ));
    }
    if spec.streaming && !sse.done {
        return Err(format!(
            "stream ended without data: [DONE] after {} events",
            sse.events
        ));
    }
    if let Some(mismatch) = spec
        .expect
        .as_ref()
        .and_then(|expect| expect.mismatch(&parts.headers, &kept))
    {
        return Err(mismatch);
    }
    Ok(Timings {
        total,
        ttft: if spec.streaming { ttft } else { None },
        gaps,
    })
}

/// Counts SSE events (blank-line terminated) across frame boundaries and spots `data: [DONE]`.
#[derive(Default)]
struct SseScan {
    /// The previous byte was `\n` (a following `\n` ends an event).
    after_newline: bool,
    /// Trailing bytes kept to find `[DONE]` split across frames.
    tail: Vec<u8>,
    events: u64,
    done: bool,
}

impl SseScan {
    const DONE: &'static [u8] = b"data: [DONE]";

    /// Feeds one frame; returns how many events it completed.
    fn feed(&mut self, data: &[u8]) -> u64 {
        let mut completed = 0;
        for &byte in data {
            match byte {
                b'\n' if self.after_newline => {
                    completed += 1;
                    self.after_newline = false;
                }
                b'\n' => self.after_newline = true,
                b'\r' => {}
                _ => self.after_newline = false,
            }
        }
        self.events += completed;
        if !self.done {
            self.tail.extend_from_slice(data);
            if self
                .tail
                .windows(Self::DONE.len())
                .any(|window| window == Self::DONE)
            {
                self.done = true;
            }
            let keep = Self::DONE.len();
            if self.tail.len() > keep {
                self.tail.drain(..self.tail.len() - keep);
            }
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_scan_counts_events_across_frames() {
        let mut scan = SseScan::default();
        assert_eq!(scan.feed(b"data: {\"a\":1}\n"), 0);
        assert_eq!(scan.feed(b"\ndata: {\"b\":2}\n\ndata: [DO"), 2);
        assert!(!scan.done);
        assert_eq!(scan.feed(b"NE]\n\n"), 1);
        assert!(scan.done);
        assert_eq!(scan.events, 3);
    }

    #[test]
    fn summary_percentiles() -> anyhow::Result<()> {
        let samples: Vec<u64> = (1..=1000).collect();
        let hist = histogram_of(&samples)?;
        let summary = Summary::of(&hist);
        assert_eq!(summary.count, 1000);
        assert_eq!(summary.p50, 500);
        assert_eq!(summary.p90, 900);
        assert_eq!(summary.p99, 990);
        assert_eq!(summary.p999, 999);
        assert_eq!(summary.max, 1000);
        assert!((summary.mean - 500.5).abs() < 0.01);
        assert_eq!(Summary::of(&histogram()?), Summary::default());
        Ok(())
    }

    #[test]
    fn merge_adds_counts_and_time() -> anyhow::Result<()> {
        let mut a = RunResult::empty()?;
        a.latency.saturating_record(100);
        a.ok = 1;
        a.elapsed = Duration::from_millis(500);
        let mut b = RunResult::empty()?;
        b.latency.saturating_record(300);
        b.ok = 1;
        b.errors = 2;
        b.elapsed = Duration::from_millis(500);
        b.error_samples.push("HTTP 502".into());
        a.merge(&b)?;
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.errors, 2);
        assert!((a.rps() - 2.0).abs() < 1e-9);
        assert_eq!(a.error_samples, vec!["HTTP 502".to_owned()]);
        Ok(())
    }

    #[test]
    fn concurrent_runs_add_their_rates() -> anyhow::Result<()> {
        let mut a = RunResult::empty()?;
        a.ok = 1_000;
        a.elapsed = Duration::from_secs(2);
        let mut b = RunResult::empty()?;
        b.ok = 900;
        b.elapsed = Duration::from_millis(1_800);
        let mut sequential = a.clone();
        sequential.merge(&b)?;
        assert_eq!(sequential.rps(), 500.0);
        a.merge_concurrent(&b)?;
        assert_eq!(a.ok, 1_900);
        assert_eq!(a.elapsed, Duration::from_secs(2));
        assert_eq!(a.rps(), 950.0);
        Ok(())
    }
}
