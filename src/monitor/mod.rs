//! The proxy's own performance: HDR histograms (microseconds) over rolling windows, request and error rates,
//! process memory — for `/api/stats`, `/metrics` and the dashboard.
//!
//! Memory is bounded by construction: a fixed set of metrics, a fixed number of time slots, and at most
//! [`MAX_LABELS`] provider/model labels (further models are folded into `other`).

pub mod prometheus;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Request arrival to the last byte sent to the client.
    Latency,
    /// Time spent in the proxy itself, upstream excluded.
    Overhead,
    /// Request arrival to the first body byte sent to the client.
    Ttft,
    /// Between two successive frames of a stream.
    InterChunkGap,
    /// Request sent upstream to the upstream's response headers (retries included).
    Upstream,
    /// Counting the prompt's tokens.
    Counting,
    /// One store batch, written and committed.
    StoreBatch,
    /// Fanning one event out to the dashboards.
    Broadcast,
    /// An event's publication by the hub to its bytes written into one dashboard's socket (per client and
    /// event): what the hub adds to delivery, the network and the browser excluded.
    Delivery,
}

impl Metric {
    pub const ALL: [Metric; 9] = [
        Metric::Latency,
        Metric::Overhead,
        Metric::Ttft,
        Metric::InterChunkGap,
        Metric::Upstream,
        Metric::Counting,
        Metric::StoreBatch,
        Metric::Broadcast,
        Metric::Delivery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Latency => "latency",
            Metric::Overhead => "overhead",
            Metric::Ttft => "ttft",
            Metric::InterChunkGap => "inter_chunk_gap",
            Metric::Upstream => "upstream",
            Metric::Counting => "counting",
            Metric::StoreBatch => "store_batch",
            Metric::Broadcast => "broadcast",
            Metric::Delivery => "dashboard_delivery",
        }
    }

    /// Its place in [`Metric::ALL`].
    fn index(self) -> usize {
        self as usize
    }

    /// Metrics also kept per provider/model.
    fn labelled(self) -> bool {
        matches!(
            self,
            Metric::Latency | Metric::Overhead | Metric::Ttft | Metric::Upstream
        )
    }
}

/// One slot of the rolling window.
const SLOT: Duration = Duration::from_secs(15);
/// Five minutes of slots.
const SLOTS: usize = 20;
/// Provider/model labels kept separately.
pub const MAX_LABELS: usize = 16;
/// Highest value tracked: one hour in microseconds (longer values are clamped).
const HIGHEST_US: u64 = 3_600_000_000;

/// Two significant figures: ~1% resolution in ~13 KB, the same for every histogram.
#[expect(
    clippy::expect_used,
    reason = "constant bounds, checked by the unit tests"
)]
fn new_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, HIGHEST_US, 2).expect("valid histogram bounds")
}

/// A histogram since start plus one per time slot for the last five minutes.
struct Windowed {
    total: Histogram<u32>,
    slots: VecDeque<(u64, Histogram<u32>)>,
}

impl Windowed {
    fn new() -> Self {
        Self {
            total: new_histogram(),
            slots: VecDeque::with_capacity(SLOTS + 1),
        }
    }

    fn record(&mut self, slot: u64, value_us: u64) {
        let value = value_us.clamp(1, HIGHEST_US);
        let _ = self.total.record(value);
        if self.slots.back().is_none_or(|(s, _)| *s != slot) {
            let mut recycled = if self.slots.len() >= SLOTS {
                self.slots
                    .pop_front()
                    .map(|(_, h)| h)
                    .unwrap_or_else(new_histogram)
            } else {
                new_histogram()
            };
            recycled.reset();
            self.slots.push_back((slot, recycled));
        }
        if let Some((_, histogram)) = self.slots.back_mut() {
            let _ = histogram.record(value);
        }
    }

    /// The merged histogram of the slots within `window` slots of `now_slot` (or since start).
    fn merged(&self, now_slot: u64, window: Option<u64>) -> Histogram<u32> {
        let Some(window) = window else {
            return self.total.clone();
        };
        let mut merged = new_histogram();
        for (slot, histogram) in &self.slots {
            if now_slot.saturating_sub(*slot) < window {
                let _ = merged.add(histogram);
            }
        }
        merged
    }
}

/// The windows `/api/stats` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    LastMinute,
    Last5Minutes,
    SinceStart,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::LastMinute, Window::Last5Minutes, Window::SinceStart];

    fn slots(self) -> Option<u64> {
        match self {
            Window::LastMinute => Some(60 / SLOT.as_secs()),
            Window::Last5Minutes => Some(SLOTS as u64),
            Window::SinceStart => None,
        }
    }
}

/// Percentiles of one histogram.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl Summary {
    fn of(h: &Histogram<u32>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// What the monitor keeps of a finished request (the accounting record's timings and outcome).
pub struct RequestSample<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub latency_us: u64,
    pub overhead_us: Option<u64>,
    pub ttft_us: Option<u64>,
    pub upstream_us: Option<u64>,
    pub counting_us: u64,
    pub error_kind: Option<&'a str>,
}

/// Per-request figures: the labelled histograms and the counts behind the rates.
struct Requests {
    labelled: HashMap<(String, Metric), Windowed>,
    labels: Vec<String>,
    /// Requests and errors per slot, for rates: (slot, requests, errors by kind).
    counts: VecDeque<(u64, u64, BTreeMap<String, u64>)>,
    requests_total: u64,
    errors_total: BTreeMap<String, u64>,
}

/// How long a resident-memory reading is reused.
const RSS_EVERY: Duration = Duration::from_secs(1);

/// Shared monitor. Recording takes one short lock per metric: a streamed frame's gap, a dashboard's deliveries and
/// a finished request do not wait for one another, and a snapshot holds each lock only to merge that metric's slots.
pub struct Monitor {
    started: Instant,
    /// One windowed histogram per metric, indexed by `Metric::index`.
    overall: [Mutex<Windowed>; Metric::ALL.len()],
    requests: Mutex<Requests>,
    /// The last resident-memory reading and when it was taken.
    rss: Mutex<Option<(Instant, Option<u64>)>>,
    /// Dashboards connected to `/ws` now (kept by the live hub).
    pub dashboard_clients: std::sync::atomic::AtomicUsize,
}

impl Monitor {
    pub fn new() -> Arc<Monitor> {
        Arc::new(Monitor {
            started: Instant::now(),
            overall: std::array::from_fn(|_| Mutex::new(Windowed::new())),
            requests: Mutex::new(Requests {
                labelled: HashMap::new(),
                labels: Vec::new(),
                counts: VecDeque::with_capacity(SLOTS + 1),
                requests_total: 0,
                errors_total: BTreeMap::new(),
            }),
            rss: Mutex::new(None),
            dashboard_clients: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn slot(&self) -> u64 {
        self.started.elapsed().as_secs() / SLOT.as_secs()
    }

    fn windowed(&self, metric: Metric) -> &Mutex<Windowed> {
        &self.overall[metric.index()]
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records one value of an unlabelled measurement (gaps, store batches, broadcasts).
    pub fn record(&self, metric: Metric, value_us: u64) {
        let slot = self.slot();
        self.windowed(metric).lock().record(slot, value_us);
    }

    /// Records several values of one unlabelled measurement under one lock (a dashboard's batch of events).
    pub fn record_all(&self, metric: Metric, values_us: impl IntoIterator<Item = u64>) {
        let slot = self.slot();
        let mut w = self.windowed(metric).lock();
        for value in values_us {
            w.record(slot, value);
        }
    }

    /// Records a finished request: its timings overall and under its label, its outcome for the rates.
    pub fn record_request(&self, record: &RequestSample<'_>) {
        let slot = self.slot();
        let label = format!(
            "{}/{}",
            record.provider,
            record.model.rsplit('/').next().unwrap_or(record.model)
        );
        let values = [
            (Metric::Latency, Some(record.latency_us)),
            (Metric::Overhead, record.overhead_us),
            (Metric::Ttft, record.ttft_us),
            (Metric::Upstream, record.upstream_us),
            (Metric::Counting, Some(record.counting_us)),
        ];
        for (metric, value) in values {
            if let Some(value) = value {
                self.windowed(metric).lock().record(slot, value);
            }
        }
        let mut state = self.requests.lock();
        let state = &mut *state;
        let label = if state.labels.contains(&label) {
            label
        } else if state.labels.len() < MAX_LABELS {
            state.labels.push(label.clone());
            label
        } else {
            "other".to_string()
        };
        for (metric, value) in values {
            let Some(value) = value else { continue };
            if metric.labelled() {
                state
                    .labelled
                    .entry((label.clone(), metric))
                    .or_insert_with(Windowed::new)
                    .record(slot, value);
            }
        }
        Self::count(state, slot, record.error_kind);
    }

    /// Counts a request the proxy refused before it had a record, as an error of kind `code`.
    pub fn record_refusal(&self, code: &str) {
        let slot = self.slot();
        let mut state = self.requests.lock();
        Self::count(&mut state, slot, Some(code));
    }

    fn count(state: &mut Requests, slot: u64, error_kind: Option<&str>) {
        state.requests_total += 1;
        if state.counts.back().is_none_or(|(s, _, _)| *s != slot) {
            if state.counts.len() >= SLOTS {
                state.counts.pop_front();
            }
            state.counts.push_back((slot, 0, BTreeMap::new()));
        }
        if let Some((_, requests, errors)) = state.counts.back_mut() {
            *requests += 1;
            if let Some(kind) = error_kind {
                *errors.entry(kind.to_string()).or_default() += 1;
            }
        }
        if let Some(kind) = error_kind {
            *state.errors_total.entry(kind.to_string()).or_default() += 1;
        }
    }

    /// Requests finished since start, and those that ended with an error kind (for windowed rates).
    pub fn counts(&self) -> (u64, u64) {
        let state = self.requests.lock();
        (state.requests_total, state.errors_total.values().sum())
    }

    /// The `quantile` of `metric` over the last `window` (rounded up to whole 15 s slots, the current one
    /// included); `None` without values in it.
    pub fn quantile(&self, metric: Metric, window: Duration, quantile: f64) -> Option<u64> {
        let now = self.slot();
        let slots = window.as_secs().div_ceil(SLOT.as_secs()).max(1);
        let merged = self.windowed(metric).lock().merged(now, Some(slots));
        (!merged.is_empty()).then(|| merged.value_at_quantile(quantile))
    }

    /// Resident memory of the process, read at most once per second (a burst of dashboards connecting asks once
    /// each).
    pub fn rss_bytes(&self) -> Option<u64> {
        if let Some((at, value)) = *self.rss.lock()
            && at.elapsed() < RSS_EVERY
        {
            return value;
        }
        let value = memory_stats::memory_stats().map(|m| m.physical_mem as u64);
        *self.rss.lock() = Some((Instant::now(), value));
        value
    }

    /// Percentiles per metric and window, overall and per label.
    pub fn snapshot(&self) -> MonitorSnapshot {
        self.snapshot_of(&Metric::ALL, &Window::ALL, true)
    }

    /// Percentiles of `metrics` over `windows` (and per label over the last five minutes if `labels`), rates and
    /// memory. Each lock is held only to merge one metric's slots; the percentiles are computed after.
    pub fn snapshot_of(
        &self,
        metrics: &[Metric],
        windows: &[Window],
        labels: bool,
    ) -> MonitorSnapshot {
        let rss_bytes = self.rss_bytes();
        let now = self.slot();
        let mut histograms = BTreeMap::new();
        for metric in metrics {
            let merged: Vec<Histogram<u32>> = {
                let w = self.windowed(*metric).lock();
                windows
                    .iter()
                    .map(|window| w.merged(now, window.slots()))
                    .collect()
            };
            let summaries = windows
                .iter()
                .zip(&merged)
                .map(|(window, h)| (window_name(*window), Summary::of(h)))
                .collect();
            histograms.insert(metric.name(), summaries);
        }
        // Rates over the last minute (the current, partial slot included).
        let minute = Window::LastMinute.slots().unwrap_or(4);
        let (requests_total, errors_total, recent_requests, recent_errors, labelled) = {
            let state = self.requests.lock();
            let mut recent_requests = 0;
            let mut recent_errors: BTreeMap<String, u64> = BTreeMap::new();
            for (_, requests, errors) in state
                .counts
                .iter()
                .filter(|(s, _, _)| now.saturating_sub(*s) < minute)
            {
                recent_requests += requests;
                for (kind, n) in errors {
                    *recent_errors.entry(kind.clone()).or_default() += n;
                }
            }
            let labelled: Vec<(String, Metric, Histogram<u32>)> = if labels {
                state
                    .labelled
                    .iter()
                    .filter(|((_, metric), _)| metrics.contains(metric))
                    .map(|((label, metric), w)| {
                        (
                            label.clone(),
                            *metric,
                            w.merged(now, Window::Last5Minutes.slots()),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (
                state.requests_total,
                state.errors_total.clone(),
                recent_requests,
                recent_errors,
                labelled,
            )
        };
        let mut by_label: BTreeMap<String, BTreeMap<&'static str, Summary>> = BTreeMap::new();
        for (label, metric, h) in &labelled {
            by_label
                .entry(label.clone())
                .or_default()
                .insert(metric.name(), Summary::of(h));
        }
        let covered =
            (self.started.elapsed().as_secs_f64()).clamp(1.0, (minute * SLOT.as_secs()) as f64);
        let error_count: u64 = recent_errors.values().sum();
        MonitorSnapshot {
            uptime_s: self.started.elapsed().as_secs(),
            requests_total,
            requests_per_s: recent_requests as f64 / covered,
            error_rate: if recent_requests == 0 {
                0.0
            } else {
                error_count as f64 / recent_requests as f64
            },
            errors_last_minute: recent_errors,
            errors_total,
            histograms,
            by_label,
            rss_bytes,
        }
    }

    /// The since-start histograms for Prometheus: (metric, label or None, histogram). Holds every lock (taken in
    /// one order, metrics first) while `f` runs.
    pub(crate) fn with_totals<R>(
        &self,
        f: impl FnOnce(Vec<(Metric, Option<&str>, &Histogram<u32>)>, u64, &BTreeMap<String, u64>) -> R,
    ) -> R {
        let overall: Vec<_> = self.overall.iter().map(|w| w.lock()).collect();
        let state = self.requests.lock();
        let mut all: Vec<(Metric, Option<&str>, &Histogram<u32>)> = Vec::new();
        for (metric, w) in Metric::ALL.iter().zip(&overall) {
            all.push((*metric, None, &w.total));
        }
        let mut labelled: Vec<_> = state.labelled.iter().collect();
        labelled.sort_by(|a, b| a.0.cmp(b.0));
        for ((label, metric), w) in labelled {
            all.push((*metric, Some(label.as_str()), &w.total));
        }
        f(all, state.requests_total, &state.errors_total)
    }
}

fn window_name(window: Window) -> &'static str {
    match window {
        Window::LastMinute => "last_minute",
        Window::Last5Minutes => "last_5_minutes",
        Window::SinceStart => "since_start",
    }
}

#[derive(Debug, Serialize)]
pub struct MonitorSnapshot {
    pub uptime_s: u64,
    pub requests_total: u64,
    pub requests_per_s: f64,
    pub error_rate: f64,
    pub errors_last_minute: BTreeMap<String, u64>,
    pub errors_total: BTreeMap<String, u64>,
    /// metric → window → percentiles (microseconds).
    pub histograms: BTreeMap<&'static str, BTreeMap<&'static str, Summary>>,
    /// provider/model → metric → percentiles over the last 5 minutes.
    pub by_label: BTreeMap<String, BTreeMap<&'static str, Summary>>,
    pub rss_bytes: Option<u64>,
}

pub use crate::util::LogThrottle;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut w = Windowed::new();
        // 1..=10_000 µs, uniform: p50 ≈ 5000, p99 ≈ 9900 (2 significant figures: within 1%).
        for v in 1..=10_000u64 {
            w.record(0, v);
        }
        let s = Summary::of(&w.merged(0, None));
        assert_eq!(s.count, 10_000);
        assert!((s.p50 as f64 - 5000.0).abs() / 5000.0 < 0.01, "{s:?}");
        assert!((s.p99 as f64 - 9900.0).abs() / 9900.0 < 0.01, "{s:?}");
        assert!((s.max as f64 - 10_000.0).abs() / 10_000.0 < 0.01, "{s:?}");
    }

    #[test]
    fn metric_index_is_its_place() {
        for (i, metric) in Metric::ALL.iter().enumerate() {
            assert_eq!(metric.index(), i);
        }
    }

    #[test]
    fn snapshots_cover_what_they_are_asked_for() {
        let monitor = Monitor::new();
        monitor.record(Metric::InterChunkGap, 20_000);
        monitor.record_all(Metric::Delivery, [100, 200, 300]);
        let all = monitor.snapshot();
        assert_eq!(all.histograms.len(), Metric::ALL.len());
        assert_eq!(all.histograms["dashboard_delivery"]["since_start"].count, 3);
        assert_eq!(all.histograms["inter_chunk_gap"]["last_minute"].count, 1);
        let some = monitor.snapshot_of(&[Metric::Delivery], &[Window::LastMinute], false);
        assert_eq!(some.histograms.len(), 1);
        assert_eq!(some.histograms["dashboard_delivery"].len(), 1);
        assert_eq!(
            some.histograms["dashboard_delivery"]["last_minute"].count,
            3
        );
        assert!(some.by_label.is_empty());
    }

    #[test]
    fn windows_forget_old_slots() {
        let mut w = Windowed::new();
        w.record(0, 100);
        w.record(10, 200);
        w.record(25, 300);
        // At slot 25: the last minute (4 slots) holds only slot 25; five minutes (20) holds 10 and 25.
        assert_eq!(w.merged(25, Some(4)).len(), 1);
        assert_eq!(w.merged(25, Some(20)).len(), 2);
        assert_eq!(w.merged(25, None).len(), 3);
        for slot in 0..100 {
            w.record(slot, 5);
        }
        assert!(w.slots.len() <= SLOTS);
    }
}
