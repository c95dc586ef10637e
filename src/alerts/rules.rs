//! The rules, evaluated against samples: pure state machines with no clock or I/O of their own, so tests drive
//! them with synthetic inputs.
//!
//! Every alert has a [`Latch`]: it fires once when its condition holds (for the rule's sustain time, if any),
//! stays quiet while the value sits between the firing and the clearing level (hysteresis), and resolves once
//! when the value falls below the clearing level. After resolving it may fire again: a new alert, a new id.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::{Alert, AlertKind, Severity};
use crate::config::AlertsConfig;
use crate::store::ContextUpdate;

/// Cumulative counters and current gauges, read once per evaluation.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Monotonic time of the sample.
    pub at: Duration,
    /// Requests finished since start, and those that ended in an error.
    pub requests: u64,
    pub errors: u64,
    /// p95 end-to-end latency over the latency window (µs), `None` without requests in it.
    pub latency_p95_us: Option<u64>,
    /// Upstream 429 answers since start, per provider.
    pub throttled: Vec<(String, u64)>,
    pub rss_bytes: Option<u64>,
    /// The store writer, when the store runs.
    pub store: Option<StoreSample>,
    /// Failed Redis calls since start (`[cluster] redis`), `None` without Redis.
    pub redis_failures: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StoreSample {
    pub queued: usize,
    pub capacity: usize,
    /// Records dropped since start.
    pub dropped: u64,
}

/// What the store writer reported about sessions since the last evaluation.
#[derive(Debug, Clone, Copy)]
pub enum ContextEvent {
    Update(ContextUpdate),
    Deleted(i64),
}

/// A change of an alert's state.
#[derive(Debug, Clone)]
pub enum Transition {
    Fired(Alert),
    Resolved(Alert),
}

/// How an alert ended.
pub const CLEARED: &str = "cleared";
pub const SESSION_DELETED: &str = "session_deleted";

/// Context alerts held at once (one per threshold per session); beyond, new ones are counted, not raised.
pub const MAX_CONTEXT_ALERTS: usize = 4096;
/// Samples kept for windowed counts.
const MAX_SAMPLES: usize = 4096;
/// The window of the Redis rule.
const REDIS_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Latency,
    ErrorRate,
    Throttled(String),
    Memory,
    StoreBacklog,
    StoreDropped,
    RedisUnavailable,
    Context { session: i64, level: usize },
}

/// Where a value stands against a rule.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    /// At or over the firing level.
    Fire,
    /// Between the clearing and the firing level: nothing changes.
    Hold,
    /// Below the clearing level, or no data.
    Clear,
}

fn level(value: Option<f64>, fire_at: f64, clear_below: f64) -> Level {
    match value {
        Some(v) if v >= fire_at => Level::Fire,
        Some(v) if v >= clear_below => Level::Hold,
        _ => Level::Clear,
    }
}

#[derive(Debug, Default)]
struct Latch {
    active: Option<Alert>,
    /// Since when the condition holds without interruption (for sustained rules).
    since: Option<Duration>,
}

/// What a firing alert says, built only when it fires.
struct Draft {
    kind: AlertKind,
    severity: Severity,
    session_id: Option<i64>,
    subject: Option<String>,
    value: f64,
    threshold: f64,
    message: String,
}

/// All rules and their latches.
pub struct Evaluator {
    config: AlertsConfig,
    next_id: i64,
    latches: HashMap<Key, Latch>,
    samples: VecDeque<Sample>,
    context_alerts: usize,
    /// Context alerts not raised because [`MAX_CONTEXT_ALERTS`] were active.
    pub suppressed: u64,
}

impl Evaluator {
    pub fn new(config: AlertsConfig) -> Evaluator {
        Evaluator {
            config,
            next_id: 1,
            latches: HashMap::new(),
            samples: VecDeque::new(),
            context_alerts: 0,
            suppressed: 0,
        }
    }

    /// New alerts get ids after `max_id` (another instance led before and numbered some).
    pub fn ids_after(&mut self, max_id: i64) {
        self.next_id = self.next_id.max(max_id + 1);
    }

    /// Continues after a previous run: ids after `max_id`; its context alerts stay active. Returns those no
    /// longer matching a configured threshold, resolved.
    pub fn restore(&mut self, max_id: i64, context: Vec<Alert>, now_ms: i64) -> Vec<Transition> {
        self.next_id = self.next_id.max(max_id + 1);
        let mut out = Vec::new();
        for mut alert in context {
            let level = self
                .config
                .context_thresholds
                .iter()
                .position(|t| (t - alert.threshold).abs() < 1e-9);
            match (level, alert.session_id) {
                (Some(level), Some(session)) if self.context_alerts < MAX_CONTEXT_ALERTS => {
                    self.context_alerts += 1;
                    self.latches.insert(
                        Key::Context { session, level },
                        Latch {
                            active: Some(alert),
                            since: None,
                        },
                    );
                }
                _ => {
                    alert.resolved_at_ms = Some(now_ms);
                    alert.resolution = Some(CLEARED.to_string());
                    out.push(Transition::Resolved(alert));
                }
            }
        }
        out
    }

    /// Active alerts, as the latches hold them.
    pub fn active(&self) -> Vec<&Alert> {
        self.latches
            .values()
            .filter_map(|l| l.active.as_ref())
            .collect()
    }

    /// Evaluates every rule against `sample` and the session events since the last call. `now_ms` is wall
    /// time for the alerts' timestamps.
    pub fn evaluate(
        &mut self,
        sample: Sample,
        events: &[ContextEvent],
        now_ms: i64,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        self.push_sample(sample);
        self.system_rules(now_ms, &mut out);
        self.context_rules(events, now_ms, &mut out);
        out
    }

    fn push_sample(&mut self, sample: Sample) {
        let longest = self
            .config
            .error_rate_window
            .max(self.config.upstream_429_window)
            .max(self.config.store_dropped_window);
        self.samples.push_back(sample);
        // Keep one sample at or before the longest window's start: the baseline of the deltas.
        while self.samples.len() > MAX_SAMPLES
            || (self.samples.len() > 2
                && self.samples.get(1).is_some_and(|s| {
                    self.samples
                        .back()
                        .is_some_and(|last| last.at.saturating_sub(s.at) >= longest)
                }))
        {
            self.samples.pop_front();
        }
    }

    /// How much `counter` grew over the last `window` (since start when the process is younger).
    /// How much a since-start counter grew over the last `window`. Within the first window after start the
    /// baseline is the start itself (every counter 0), not the first sample: what happened before the first
    /// evaluation counts too.
    fn growth(&self, window: Duration, counter: impl Fn(&Sample) -> u64) -> u64 {
        let Some(last) = self.samples.back() else {
            return 0;
        };
        if last.at <= window {
            return counter(last);
        }
        let start = last.at.saturating_sub(window);
        let baseline = self
            .samples
            .iter()
            .rev()
            .find(|s| s.at <= start)
            .or_else(|| self.samples.front());
        baseline.map_or(0, |b| counter(last).saturating_sub(counter(b)))
    }

    fn system_rules(&mut self, now_ms: i64, out: &mut Vec<Transition>) {
        let Some(sample) = self.samples.back().cloned() else {
            return;
        };
        let c = self.config.clone();
        self.redis_rule(&sample, now_ms, out);

        // p95 end-to-end latency, sustained.
        if c.latency_p95_ms > 0 {
            let fire_at = c.latency_p95_ms as f64;
            let p95_ms = sample.latency_p95_us.map(|us| us as f64 / 1000.0);
            let lvl = level(p95_ms, fire_at, fire_at * 0.8);
            let window = c.latency_window.as_secs();
            let sustain = c.latency_for.as_secs();
            self.step(Key::Latency, lvl, c.latency_for, sample.at, now_ms, out, || Draft {
                kind: AlertKind::Latency,
                severity: Severity::Warning,
                session_id: None,
                subject: None,
                value: p95_ms.unwrap_or(0.0).round(),
                threshold: fire_at,
                message: format!(
                    "p95 latency {:.1} s over the last {window} s, above {:.1} s for {sustain} s",
                    p95_ms.unwrap_or(0.0) / 1000.0,
                    fire_at / 1000.0
                ),
            });
        }

        // Error share over a window, once enough requests were seen.
        if c.error_rate > 0.0 {
            let requests = self.growth(c.error_rate_window, |s| s.requests);
            let errors = self.growth(c.error_rate_window, |s| s.errors);
            let rate = (requests >= c.error_rate_min_requests && requests > 0)
                .then(|| errors as f64 / requests as f64);
            let lvl = level(rate, c.error_rate, c.error_rate_clear);
            let window = c.error_rate_window.as_secs();
            self.step(Key::ErrorRate, lvl, Duration::ZERO, sample.at, now_ms, out, || Draft {
                kind: AlertKind::ErrorRate,
                severity: Severity::Critical,
                session_id: None,
                subject: None,
                value: rate.unwrap_or(0.0),
                threshold: c.error_rate,
                message: format!(
                    "error rate {:.0}% ({errors} of {requests} requests) over the last {window} s, above {:.0}%",
                    rate.unwrap_or(0.0) * 100.0,
                    c.error_rate * 100.0
                ),
            });
        }

        // Bursts of upstream 429s, per provider.
        if c.upstream_429_count > 0 {
            for (provider, _) in &sample.throttled {
                let seen = self.growth(c.upstream_429_window, |s| {
                    s.throttled
                        .iter()
                        .find(|(p, _)| p == provider)
                        .map_or(0, |(_, n)| *n)
                });
                let count = c.upstream_429_count as f64;
                let lvl = level(Some(seen as f64), count, 1.0);
                let window = c.upstream_429_window.as_secs();
                self.step(
                    Key::Throttled(provider.clone()),
                    lvl,
                    Duration::ZERO,
                    sample.at,
                    now_ms,
                    out,
                    || Draft {
                        kind: AlertKind::Upstream429,
                        severity: Severity::Warning,
                        session_id: None,
                        subject: Some(provider.clone()),
                        value: seen as f64,
                        threshold: count,
                        message: format!(
                            "provider {provider} answered 429 (rate limited) {seen} times in the last {window} s"
                        ),
                    },
                );
            }
        }

        // Resident memory over the budget.
        if c.rss_budget_bytes > 0 {
            let budget = c.rss_budget_bytes as f64;
            let rss = sample.rss_bytes.map(|b| b as f64);
            let lvl = level(rss, budget, budget * 0.9);
            self.step(
                Key::Memory,
                lvl,
                Duration::ZERO,
                sample.at,
                now_ms,
                out,
                || Draft {
                    kind: AlertKind::Memory,
                    severity: Severity::Warning,
                    session_id: None,
                    subject: None,
                    value: rss.unwrap_or(0.0),
                    threshold: budget,
                    message: format!(
                        "resident memory {} MiB, over the budget of {} MiB",
                        (rss.unwrap_or(0.0) / 1_048_576.0).round(),
                        (budget / 1_048_576.0).round()
                    ),
                },
            );
        }

        // The store: a queue filling up, records lost.
        if let Some(store) = sample.store {
            if c.store_backlog > 0.0 && store.capacity > 0 {
                let fire_at = (c.store_backlog * store.capacity as f64).max(1.0);
                let queued = store.queued as f64;
                let lvl = level(Some(queued), fire_at, fire_at / 2.0);
                self.step(
                    Key::StoreBacklog,
                    lvl,
                    Duration::ZERO,
                    sample.at,
                    now_ms,
                    out,
                    || Draft {
                        kind: AlertKind::StoreBacklog,
                        severity: Severity::Warning,
                        session_id: None,
                        subject: None,
                        value: queued,
                        threshold: fire_at.round(),
                        message: format!(
                            "store queue holds {} of {} records: the database is not keeping up",
                            store.queued, store.capacity
                        ),
                    },
                );
            }
            let dropped = self.growth(c.store_dropped_window, |s| s.store.map_or(0, |s| s.dropped));
            let window = c.store_dropped_window.as_secs();
            let lvl = level(Some(dropped as f64), 1.0, 1.0);
            self.step(
                Key::StoreDropped,
                lvl,
                Duration::ZERO,
                sample.at,
                now_ms,
                out,
                || Draft {
                    kind: AlertKind::StoreDropped,
                    severity: Severity::Critical,
                    session_id: None,
                    subject: None,
                    value: dropped as f64,
                    threshold: 1.0,
                    message: format!(
                        "store dropped {dropped} request records in the last {window} s"
                    ),
                },
            );
        }
    }

    /// Redis failing its calls: fires at the first failure in [`REDIS_WINDOW`], clears after a window without.
    fn redis_rule(&mut self, sample: &Sample, now_ms: i64, out: &mut Vec<Transition>) {
        if sample.redis_failures.is_none() {
            return;
        }
        let failed = self.growth(REDIS_WINDOW, |s| s.redis_failures.unwrap_or(0));
        let window = REDIS_WINDOW.as_secs();
        self.step(
            Key::RedisUnavailable,
            level(Some(failed as f64), 1.0, 1.0),
            Duration::ZERO,
            sample.at,
            now_ms,
            out,
            || Draft {
                kind: AlertKind::RedisUnavailable,
                severity: Severity::Warning,
                session_id: None,
                subject: None,
                value: failed as f64,
                threshold: 1.0,
                message: format!(
                    "Redis failed {failed} calls in the last {window} s: shared budgets and cache are decided by each instance alone meanwhile"
                ),
            },
        );
    }

    fn context_rules(&mut self, events: &[ContextEvent], now_ms: i64, out: &mut Vec<Transition>) {
        let thresholds = self.config.context_thresholds.clone();
        for event in events {
            match *event {
                ContextEvent::Update(update) => {
                    if update.window == 0 {
                        continue;
                    }
                    let ratio = update.tokens as f64 / update.window as f64;
                    for (index, threshold) in thresholds.iter().enumerate() {
                        let key = Key::Context {
                            session: update.session_id,
                            level: index,
                        };
                        let lvl = level(
                            Some(ratio),
                            *threshold,
                            threshold - self.config.context_hysteresis,
                        );
                        let known = self.latches.get(&key).is_some_and(|l| l.active.is_some());
                        if lvl == Level::Fire && !known && self.context_alerts >= MAX_CONTEXT_ALERTS
                        {
                            self.suppressed += 1;
                            continue;
                        }
                        if lvl != Level::Fire && !known {
                            continue;
                        }
                        let severity = if *threshold >= self.config.context_critical {
                            Severity::Critical
                        } else {
                            Severity::Warning
                        };
                        let fired = self.step(
                            key.clone(),
                            lvl,
                            Duration::ZERO,
                            Duration::ZERO,
                            now_ms,
                            out,
                            || Draft {
                                kind: AlertKind::Context,
                                severity,
                                session_id: Some(update.session_id),
                                subject: None,
                                value: (ratio * 10_000.0).round() / 10_000.0,
                                threshold: *threshold,
                                message: format!(
                                    "session {} uses {:.0}% of its context ({} of {} tokens)",
                                    update.session_id,
                                    ratio * 100.0,
                                    update.tokens,
                                    update.window
                                ),
                            },
                        );
                        match fired {
                            Some(true) => self.context_alerts += 1,
                            Some(false) => {
                                self.context_alerts = self.context_alerts.saturating_sub(1);
                                self.latches.remove(&key);
                            }
                            None => {}
                        }
                    }
                }
                ContextEvent::Deleted(session) => {
                    let keys: Vec<Key> = self
                        .latches
                        .keys()
                        .filter(|k| matches!(k, Key::Context { session: s, .. } if *s == session))
                        .cloned()
                        .collect();
                    for key in keys {
                        if let Some(mut alert) = self.latches.remove(&key).and_then(|l| l.active) {
                            self.context_alerts = self.context_alerts.saturating_sub(1);
                            alert.resolved_at_ms = Some(now_ms);
                            alert.resolution = Some(SESSION_DELETED.to_string());
                            out.push(Transition::Resolved(alert));
                        }
                    }
                }
            }
        }
    }

    /// Moves one latch; returns `Some(true)` when it fired, `Some(false)` when it resolved.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        key: Key,
        lvl: Level,
        sustain: Duration,
        at: Duration,
        now_ms: i64,
        out: &mut Vec<Transition>,
        draft: impl FnOnce() -> Draft,
    ) -> Option<bool> {
        let latch = self.latches.entry(key).or_default();
        match lvl {
            Level::Fire => {
                if latch.active.is_some() {
                    return None;
                }
                let since = *latch.since.get_or_insert(at);
                if at.saturating_sub(since) < sustain {
                    return None;
                }
                let d = draft();
                let alert = Alert {
                    id: self.next_id,
                    kind: d.kind,
                    severity: d.severity,
                    session_id: d.session_id,
                    subject: d.subject,
                    message: d.message,
                    value: d.value,
                    threshold: d.threshold,
                    fired_at_ms: now_ms,
                    resolved_at_ms: None,
                    resolution: None,
                    acked_at_ms: None,
                };
                self.next_id += 1;
                latch.active = Some(alert.clone());
                out.push(Transition::Fired(alert));
                Some(true)
            }
            Level::Hold => {
                latch.since = None;
                None
            }
            Level::Clear => {
                latch.since = None;
                let mut alert = latch.active.take()?;
                alert.resolved_at_ms = Some(now_ms);
                alert.resolution = Some(CLEARED.to_string());
                out.push(Transition::Resolved(alert));
                Some(false)
            }
        }
    }

    /// Marks an active alert acknowledged; the updated alert, if it is active.
    pub fn ack(&mut self, id: i64, now_ms: i64) -> Option<Alert> {
        let alert = self
            .latches
            .values_mut()
            .filter_map(|l| l.active.as_mut())
            .find(|a| a.id == id)?;
        alert.acked_at_ms.get_or_insert(now_ms);
        Some(alert.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config() -> AlertsConfig {
        AlertsConfig {
            latency_for: Duration::from_secs(300),
            error_rate_window: Duration::from_secs(60),
            error_rate_min_requests: 20,
            ..AlertsConfig::default()
        }
    }

    fn at(secs: u64) -> Sample {
        Sample {
            at: Duration::from_secs(secs),
            rss_bytes: Some(50 << 20),
            ..Sample::default()
        }
    }

    fn fired(t: &[Transition]) -> Vec<&Alert> {
        t.iter()
            .filter_map(|t| match t {
                Transition::Fired(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn resolved(t: &[Transition]) -> Vec<&Alert> {
        t.iter()
            .filter_map(|t| match t {
                Transition::Resolved(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn ctx(session: i64, tokens: u64) -> ContextEvent {
        ContextEvent::Update(ContextUpdate {
            session_id: session,
            tokens,
            window: 1000,
        })
    }

    #[test]
    fn context_thresholds_fire_once_each_and_resolve_with_hysteresis() {
        let mut e = Evaluator::new(config());
        let t = e.evaluate(at(0), &[ctx(1, 500)], 0);
        assert!(t.is_empty());
        let t = e.evaluate(at(1), &[ctx(1, 850)], 1);
        let f = fired(&t);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].threshold, 0.80);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].session_id, Some(1));
        // Still above: nothing new, however often it is seen.
        for i in 2..5 {
            assert!(e.evaluate(at(i), &[ctx(1, 860)], i as i64).is_empty());
        }
        // A jump over the two others fires both, 95 % as critical.
        let t = e.evaluate(at(5), &[ctx(1, 960)], 5);
        let f = fired(&t);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].threshold, 0.95);
        assert_eq!(f[1].severity, Severity::Critical);
        assert_eq!(e.active().len(), 3);
        // Just under 95 % but within the hysteresis margin: nothing resolves.
        assert!(e.evaluate(at(6), &[ctx(1, 920)], 6).is_empty());
        // Under 90 %: 95 resolves (below 90); 90 holds (85 ≤ 0.89 < 90).
        let t = e.evaluate(at(7), &[ctx(1, 890)], 7);
        let r = resolved(&t);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].threshold, 0.95);
        assert_eq!(r[0].resolution.as_deref(), Some(CLEARED));
        // A compacted conversation: everything left resolves, once.
        let t = e.evaluate(at(8), &[ctx(1, 100)], 8);
        assert_eq!(resolved(&t).len(), 2);
        assert!(e.evaluate(at(9), &[ctx(1, 100)], 9).is_empty());
        assert!(e.active().is_empty());
        // Crossing again after the resolution is a new alert with a new id.
        let t = e.evaluate(at(10), &[ctx(1, 820)], 10);
        let f = fired(&t);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].id, 4);
    }

    #[test]
    fn deleting_a_session_resolves_its_context_alerts() {
        let mut e = Evaluator::new(config());
        let t = e.evaluate(at(0), &[ctx(7, 990), ctx(8, 810)], 0);
        assert_eq!(fired(&t).len(), 4);
        let t = e.evaluate(at(1), &[ContextEvent::Deleted(7)], 1);
        let r = resolved(&t);
        assert_eq!(r.len(), 3);
        assert!(
            r.iter()
                .all(|a| a.resolution.as_deref() == Some(SESSION_DELETED))
        );
        assert_eq!(e.active().len(), 1);
        assert!(e.evaluate(at(2), &[ContextEvent::Deleted(7)], 2).is_empty());
    }

    #[test]
    fn error_rate_needs_enough_requests_and_resolves_once() {
        let mut e = Evaluator::new(config());
        let mut s = at(0);
        assert!(e.evaluate(s.clone(), &[], 0).is_empty());
        // One failure of two requests: far over 10 %, but too few requests.
        s.at = Duration::from_secs(1);
        s.requests = 2;
        s.errors = 1;
        assert!(e.evaluate(s.clone(), &[], 1).is_empty());
        s.at = Duration::from_secs(2);
        s.requests = 30;
        s.errors = 6;
        let t = e.evaluate(s.clone(), &[], 2);
        let f = fired(&t);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, AlertKind::ErrorRate);
        assert!((f[0].value - 0.2).abs() < 1e-9);
        // 7 % is between clear (5 %) and fire (10 %): held, not re-fired.
        s.at = Duration::from_secs(3);
        s.requests = 100;
        s.errors = 7;
        assert!(e.evaluate(s.clone(), &[], 3).is_empty());
        s.at = Duration::from_secs(4);
        s.requests = 200;
        s.errors = 7;
        let t = e.evaluate(s.clone(), &[], 4);
        assert_eq!(resolved(&t).len(), 1);
        // Once the window slid past the errors, a new burst fires again.
        s.at = Duration::from_secs(100);
        assert!(e.evaluate(s.clone(), &[], 100).is_empty());
        s.at = Duration::from_secs(101);
        s.requests = 230;
        s.errors = 37;
        assert_eq!(fired(&e.evaluate(s, &[], 101)).len(), 1);
    }

    #[test]
    fn latency_fires_only_when_sustained() {
        let mut e = Evaluator::new(config());
        let mut s = at(0);
        s.latency_p95_us = Some(6_000_000);
        assert!(e.evaluate(s.clone(), &[], 0).is_empty());
        s.at = Duration::from_secs(200);
        assert!(e.evaluate(s.clone(), &[], 0).is_empty());
        // A dip under the threshold restarts the clock.
        s.at = Duration::from_secs(201);
        s.latency_p95_us = Some(4_500_000);
        assert!(e.evaluate(s.clone(), &[], 0).is_empty());
        s.latency_p95_us = Some(6_000_000);
        for secs in [202, 400, 501] {
            s.at = Duration::from_secs(secs);
            assert!(e.evaluate(s.clone(), &[], 0).is_empty(), "{secs}");
        }
        s.at = Duration::from_secs(502);
        let t = e.evaluate(s.clone(), &[], 0);
        assert_eq!(fired(&t).len(), 1);
        assert_eq!(fired(&t)[0].threshold, 5000.0);
        s.at = Duration::from_secs(900);
        assert!(e.evaluate(s.clone(), &[], 0).is_empty());
        // 4.5 s is within the margin (clears under 4 s).
        s.latency_p95_us = Some(4_500_000);
        assert!(e.evaluate(s.clone(), &[], 0).is_empty());
        s.latency_p95_us = Some(3_000_000);
        assert_eq!(resolved(&e.evaluate(s, &[], 0)).len(), 1);
    }

    #[test]
    fn throttling_bursts_per_provider() {
        let mut e = Evaluator::new(config());
        let mut s = at(0);
        s.throttled = vec![("nvidia".into(), 0), ("groq".into(), 0)];
        assert!(e.evaluate(s.clone(), &[], 0).is_empty());
        s.at = Duration::from_secs(10);
        s.throttled = vec![("nvidia".into(), 4), ("groq".into(), 1)];
        assert!(e.evaluate(s.clone(), &[], 0).is_empty());
        s.at = Duration::from_secs(20);
        s.throttled = vec![("nvidia".into(), 5), ("groq".into(), 1)];
        let t = e.evaluate(s.clone(), &[], 0);
        assert_eq!(fired(&t).len(), 1);
        assert_eq!(fired(&t)[0].subject.as_deref(), Some("nvidia"));
        // No new 429 for a whole window: resolved.
        s.at = Duration::from_secs(79);
        assert!(e.evaluate(s.clone(), &[], 0).is_empty());
        s.at = Duration::from_secs(81);
        assert_eq!(resolved(&e.evaluate(s, &[], 0)).len(), 1);
    }

    #[test]
    fn errors_before_the_first_evaluation_count() {
        // The engine's first look comes after a burst of failed requests (a slow start): they are in the window.
        let mut e = Evaluator::new(config());
        let mut s = at(2);
        s.requests = 30;
        s.errors = 30;
        let t = e.evaluate(s, &[], 0);
        assert_eq!(fired(&t).len(), 1, "{t:?}");
        assert_eq!(fired(&t)[0].kind, AlertKind::ErrorRate);
    }

    #[test]
    fn redis_failures_fire_once_and_clear_after_a_quiet_window() {
        let mut e = Evaluator::new(config());
        let mut s = at(0);
        s.redis_failures = Some(0);
        assert!(fired(&e.evaluate(s.clone(), &[], 0)).is_empty());
        s.at = Duration::from_secs(1);
        s.redis_failures = Some(3);
        let t = e.evaluate(s.clone(), &[], 0);
        assert_eq!(fired(&t).len(), 1);
        assert_eq!(fired(&t)[0].kind, AlertKind::RedisUnavailable);
        assert_eq!(fired(&t)[0].value, 3.0);
        // Still failing: the same alert, not another.
        s.at = Duration::from_secs(2);
        s.redis_failures = Some(5);
        assert!(fired(&e.evaluate(s.clone(), &[], 0)).is_empty());
        // A minute without a failure clears it.
        s.at = Duration::from_secs(70);
        let t = e.evaluate(s.clone(), &[], 0);
        assert_eq!(resolved(&t).len(), 1, "{t:?}");
        // Without Redis, no rule.
        let mut quiet = Evaluator::new(config());
        assert!(quiet.evaluate(at(0), &[], 0).is_empty());
    }

    #[test]
    fn memory_and_store_rules() {
        let mut e = Evaluator::new(AlertsConfig {
            rss_budget_bytes: 100,
            ..config()
        });
        let mut s = at(0);
        s.rss_bytes = Some(120);
        s.store = Some(StoreSample {
            queued: 60,
            capacity: 100,
            dropped: 0,
        });
        let t = e.evaluate(s.clone(), &[], 0);
        let kinds: Vec<AlertKind> = fired(&t).iter().map(|a| a.kind).collect();
        assert_eq!(kinds, vec![AlertKind::Memory, AlertKind::StoreBacklog]);
        s.at = Duration::from_secs(1);
        s.rss_bytes = Some(95);
        s.store = Some(StoreSample {
            queued: 30,
            capacity: 100,
            dropped: 3,
        });
        let t = e.evaluate(s.clone(), &[], 0);
        assert_eq!(fired(&t).len(), 1);
        assert_eq!(fired(&t)[0].kind, AlertKind::StoreDropped);
        assert!(resolved(&t).is_empty());
        s.at = Duration::from_secs(2);
        s.rss_bytes = Some(80);
        s.store = Some(StoreSample {
            queued: 10,
            capacity: 100,
            dropped: 3,
        });
        assert_eq!(resolved(&e.evaluate(s.clone(), &[], 0)).len(), 2);
        s.at = Duration::from_secs(62);
        assert_eq!(resolved(&e.evaluate(s, &[], 0)).len(), 1);
    }

    #[test]
    fn restored_context_alerts_do_not_fire_again() {
        let mut e = Evaluator::new(config());
        let old = Alert {
            id: 41,
            kind: AlertKind::Context,
            severity: Severity::Warning,
            session_id: Some(3),
            subject: None,
            message: String::new(),
            value: 0.91,
            threshold: 0.9,
            fired_at_ms: 0,
            resolved_at_ms: None,
            resolution: None,
            acked_at_ms: None,
        };
        let mut stale = old.clone();
        stale.id = 42;
        stale.threshold = 0.5;
        let t = e.restore(42, vec![old, stale], 5);
        assert_eq!(resolved(&t).len(), 1);
        assert_eq!(resolved(&t)[0].id, 42);
        let t = e.evaluate(at(0), &[ctx(3, 920)], 6);
        // 80 % fires (new), 90 % is already active.
        let f = fired(&t);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].threshold, 0.8);
        assert_eq!(f[0].id, 43);
    }

    #[test]
    fn context_alerts_are_bounded() {
        let mut e = Evaluator::new(AlertsConfig {
            context_thresholds: vec![0.5],
            ..config()
        });
        let events: Vec<ContextEvent> = (0..MAX_CONTEXT_ALERTS as i64 + 10)
            .map(|s| ctx(s, 900))
            .collect();
        let t = e.evaluate(at(0), &events, 0);
        assert_eq!(fired(&t).len(), MAX_CONTEXT_ALERTS);
        assert_eq!(e.suppressed, 10);
    }
}
