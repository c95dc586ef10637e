//! Alerts: rules from `[alerts]` evaluated on a background task from the monitor's counters, the store's
//! context reports and a few gauges — never on the request path. Each alert fires once and resolves once
//! ([`rules`]); fired and resolved alerts are kept in memory (active ones, recent ones), broadcast to
//! subscribers (the live dashboard), written to the alerts table through the store's writer (never waiting),
//! and POSTed to a webhook when one is configured ([`webhook`]).
//!
//! Several instances on one PostgreSQL database fire once per fleet: only the leader
//! ([`crate::store::fleet::Fleet`], an advisory lock) evaluates; it hears the other instances' sessions through
//! the fleet connection. Without a fleet (SQLite) every instance is its own leader.
//!
//! Context alerts have one source: the store writer reports each session's context after a commit
//! ([`crate::store::ContextListener`]); the engine alone decides which thresholds were crossed.

pub mod rules;
pub mod webhook;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::AlertsConfig;
use crate::monitor::{Metric, Monitor};
use crate::store::fleet::Fleet;
use crate::store::{ContextListener, ContextUpdate, Readers, StoreError, StoreSink};
use crate::util::unix_ms;
use rules::{ContextEvent, Evaluator, Sample, StoreSample, Transition};

pub use crate::store::alerts::{Alert, AlertKind, Severity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Fired,
    Resolved,
    Acked,
}

/// What subscribers receive.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    pub event: EventKind,
    pub alert: Alert,
}

/// Counters of the engine, for `/api/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct AlertStats {
    pub enabled: bool,
    /// Whether this instance evaluates and fires (the fleet's leader, or alone).
    pub leader: bool,
    pub active: usize,
    pub fired: u64,
    pub resolved: u64,
    pub evaluations: u64,
    /// Context alerts not raised: too many active at once.
    pub suppressed: u64,
    /// Alert rows the store could not take (its queue full for too long).
    pub store_writes_dropped: u64,
    /// Context reports lost between the writer and the engine (more sessions per tick than kept).
    pub context_reports_dropped: u64,
    pub webhook: Option<webhook::WebhookStats>,
}

/// Resolved alerts kept in memory for `/api/alerts` (covers the store's write delay, and runs without a store).
const RECENT_RESOLVED: usize = 256;
/// Alert writes waiting for room in the store's queue.
const MAX_PENDING_WRITES: usize = 1024;
/// Context reports kept between two evaluations (one per session, the latest wins).
const MAX_CONTEXT_REPORTS: usize = 65_536;
/// Events buffered per subscriber; a slower subscriber misses events (and is told so by `broadcast`).
const EVENT_CAPACITY: usize = 256;

#[derive(Default)]
struct Feed {
    updates: HashMap<i64, ContextUpdate>,
    deleted: Vec<i64>,
}

/// Hands the writer's session reports to the engine: a short lock, bounded, never blocking the writer.
struct FeedListener {
    feed: Arc<Mutex<Feed>>,
    dropped: Arc<AtomicU64>,
}

impl ContextListener for FeedListener {
    fn context(&self, updates: &[ContextUpdate]) {
        let mut feed = self.feed.lock();
        for update in updates {
            if feed.updates.len() >= MAX_CONTEXT_REPORTS
                && !feed.updates.contains_key(&update.session_id)
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            feed.updates.insert(update.session_id, *update);
        }
    }

    fn deleted(&self, ids: &[i64]) {
        let mut feed = self.feed.lock();
        for id in ids {
            feed.updates.remove(id);
            if feed.deleted.len() >= MAX_CONTEXT_REPORTS {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            feed.deleted.push(*id);
        }
    }
}

enum StoreOp {
    Insert(Alert),
    Resolve {
        id: i64,
        at_ms: i64,
        resolution: String,
    },
    Ack {
        id: i64,
        at_ms: i64,
    },
}

pub(crate) struct StoreLink {
    pub(crate) sink: Arc<StoreSink>,
    pub(crate) readers: Arc<Readers>,
}

#[derive(Default)]
struct Counters {
    fired: AtomicU64,
    resolved: AtomicU64,
    evaluations: AtomicU64,
    store_writes_dropped: AtomicU64,
    context_reports_dropped: Arc<AtomicU64>,
}

/// Where the engine reads its inputs.
pub struct Sources {
    pub monitor: Arc<Monitor>,
    /// Upstream 429 answers since start, per provider.
    pub throttled: Vec<(String, Arc<AtomicU64>)>,
    pub store: Option<Arc<StoreSink>>,
    /// Failed Redis calls since start, with `[cluster] redis`.
    pub redis_failures: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
}

impl Sources {
    fn sample(&self, started: Instant, latency_window: std::time::Duration) -> Sample {
        let (requests, errors) = self.monitor.counts();
        Sample {
            at: started.elapsed(),
            requests,
            errors,
            latency_p95_us: self.monitor.quantile(Metric::Latency, latency_window, 0.95),
            throttled: self
                .throttled
                .iter()
                .map(|(p, n)| (p.clone(), n.load(Ordering::Relaxed)))
                .collect(),
            rss_bytes: memory_stats::memory_stats().map(|m| m.physical_mem as u64),
            store: self.store.as_ref().map(|sink| {
                let stats = sink.stats();
                StoreSample {
                    queued: stats.queued,
                    capacity: stats.queue_capacity,
                    dropped: stats.dropped,
                }
            }),
            redis_failures: self.redis_failures.as_ref().map(|count| count()),
        }
    }
}

/// The alert engine. Shared (`Arc`) by the evaluation task, the API and the dashboard.
pub struct AlertEngine {
    config: AlertsConfig,
    started: Instant,
    evaluator: Mutex<Evaluator>,
    active: Mutex<BTreeMap<i64, Alert>>,
    recent: Mutex<VecDeque<Alert>>,
    events: broadcast::Sender<AlertEvent>,
    feed: Arc<Mutex<Feed>>,
    pending: Mutex<VecDeque<StoreOp>>,
    store: OnceLock<StoreLink>,
    webhook: Option<webhook::Webhook>,
    counters: Counters,
    /// The fleet this instance belongs to (PostgreSQL): only its leader evaluates.
    fleet: OnceLock<Arc<Fleet>>,
}

impl AlertEngine {
    pub fn new(config: &AlertsConfig) -> Arc<AlertEngine> {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Arc::new(AlertEngine {
            config: config.clone(),
            started: Instant::now(),
            evaluator: Mutex::new(Evaluator::new(config.clone())),
            active: Mutex::new(BTreeMap::new()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_RESOLVED)),
            events,
            feed: Arc::new(Mutex::new(Feed::default())),
            pending: Mutex::new(VecDeque::new()),
            store: OnceLock::new(),
            webhook: config
                .enabled
                .then(|| config.webhook.as_ref().map(webhook::Webhook::new))
                .flatten(),
            counters: Counters::default(),
            fleet: OnceLock::new(),
        })
    }

    /// Joins a fleet: from now on this engine evaluates only while its instance leads.
    pub fn follow(&self, fleet: Arc<Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    /// Whether this engine evaluates and fires now.
    pub fn is_leader(&self) -> bool {
        self.fleet.get().is_none_or(|fleet| fleet.is_leader())
    }

    /// A feed of sessions' context into the engine (the fleet's leader hears other instances' through it).
    pub fn context_listener(&self) -> Arc<dyn ContextListener> {
        Arc::new(FeedListener {
            feed: Arc::clone(&self.feed),
            dropped: Arc::clone(&self.counters.context_reports_dropped),
        })
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Fired, resolved and acknowledged alerts from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AlertEvent> {
        self.events.subscribe()
    }

    /// Active alerts, newest first.
    pub fn active(&self) -> Vec<Alert> {
        self.active.lock().values().rev().cloned().collect()
    }

    /// Recently resolved alerts kept in memory, newest first.
    pub fn recent_resolved(&self) -> Vec<Alert> {
        self.recent.lock().iter().rev().cloned().collect()
    }

    pub fn stats(&self) -> AlertStats {
        let c = &self.counters;
        AlertStats {
            enabled: self.config.enabled,
            leader: self.is_leader(),
            active: self.active.lock().len(),
            fired: c.fired.load(Ordering::Relaxed),
            resolved: c.resolved.load(Ordering::Relaxed),
            evaluations: c.evaluations.load(Ordering::Relaxed),
            suppressed: self.evaluator.lock().suppressed,
            store_writes_dropped: c.store_writes_dropped.load(Ordering::Relaxed),
            context_reports_dropped: c.context_reports_dropped.load(Ordering::Relaxed),
            webhook: self.webhook.as_ref().map(webhook::Webhook::stats),
        }
    }

    /// Connects the store (blocking: call off the async workers, at start): ids continue after the table's,
    /// context alerts still open stay active, other open ones are closed as `restart`, and the writer starts
    /// reporting sessions' context.
    pub fn attach_store(&self, sink: &Arc<StoreSink>) -> Result<(), StoreError> {
        if !self.config.enabled {
            return Ok(());
        }
        let now = unix_ms();
        let listener = Arc::new(FeedListener {
            feed: Arc::clone(&self.feed),
            dropped: Arc::clone(&self.counters.context_reports_dropped),
        });
        let restored = sink.restore_alerts(now, listener)?;
        if restored.closed > 0 {
            tracing::info!(
                alerts = restored.closed,
                "alerts left open by the previous run closed"
            );
        }
        let _ = self.store.set(StoreLink {
            sink: Arc::clone(sink),
            readers: Arc::new(Readers::at(sink.location())),
        });
        let context = restored.context.clone();
        let stale = self
            .evaluator
            .lock()
            .restore(restored.max_id, restored.context, now);
        {
            let mut active = self.active.lock();
            for alert in context {
                active.insert(alert.id, alert);
            }
        }
        self.apply(stale);
        self.flush_writes();
        Ok(())
    }

    /// Starts evaluating every `interval` until `shutdown`, and the webhook sender. Returns the task; it
    /// writes what is pending before it ends.
    pub fn start(
        self: &Arc<Self>,
        sources: Sources,
        shutdown: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.config.enabled {
            return None;
        }
        if let Some(webhook) = &self.webhook {
            webhook.start(shutdown.clone());
        }
        let engine = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(engine.config.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut leading = false;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = shutdown.cancelled() => break,
                }
                if !engine.is_leader() {
                    // A follower: the leader fires; reports meanwhile are the leader's to judge.
                    let mut feed = engine.feed.lock();
                    feed.updates.clear();
                    feed.deleted.clear();
                    leading = false;
                    continue;
                }
                if !leading {
                    // Leadership came (or came back): the previous leader numbered alerts meanwhile.
                    leading = engine.catch_up_ids().await;
                }
                let sample = sources.sample(engine.started, engine.config.latency_window);
                engine.evaluate(sample);
            }
            engine.flush_writes();
        }))
    }

    /// Numbers the next alerts after the highest id in the store (`false`: not read, try again next time).
    async fn catch_up_ids(&self) -> bool {
        let Some(store) = self.store.get() else {
            return true;
        };
        let readers = Arc::clone(&store.readers);
        let read = tokio::task::spawn_blocking(move || {
            readers.with_db(crate::store::alerts::max_alert_id)
        })
        .await;
        match read {
            Ok(Ok(max_id)) => {
                self.evaluator.lock().ids_after(max_id);
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "alerts: cannot read the highest alert id");
                false
            }
            Err(_) => false,
        }
    }

    /// One evaluation: the writer's session reports since the last one, then every rule.
    pub fn evaluate(&self, sample: Sample) {
        let events: Vec<ContextEvent> = {
            let mut feed = self.feed.lock();
            let mut events: Vec<ContextEvent> = feed
                .updates
                .drain()
                .map(|(_, u)| ContextEvent::Update(u))
                .collect();
            events.extend(feed.deleted.drain(..).map(ContextEvent::Deleted));
            events
        };
        let transitions = self.evaluator.lock().evaluate(sample, &events, unix_ms());
        self.counters.evaluations.fetch_add(1, Ordering::Relaxed);
        self.apply(transitions);
        self.flush_writes();
    }

    fn apply(&self, transitions: Vec<Transition>) {
        for transition in transitions {
            let (event, op) = match transition {
                Transition::Fired(alert) => {
                    self.counters.fired.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        id = alert.id,
                        kind = alert.kind.as_str(),
                        severity = alert.severity.as_str(),
                        "alert: {}",
                        alert.message
                    );
                    self.active.lock().insert(alert.id, alert.clone());
                    (
                        AlertEvent {
                            event: EventKind::Fired,
                            alert: alert.clone(),
                        },
                        StoreOp::Insert(alert),
                    )
                }
                Transition::Resolved(mut alert) => {
                    self.counters.resolved.fetch_add(1, Ordering::Relaxed);
                    // The ack may have happened through the API after the latch copied the alert.
                    if let Some(known) = self.active.lock().remove(&alert.id) {
                        alert.acked_at_ms = alert.acked_at_ms.or(known.acked_at_ms);
                    }
                    tracing::info!(
                        id = alert.id,
                        kind = alert.kind.as_str(),
                        resolution = alert.resolution.as_deref().unwrap_or(""),
                        "alert resolved: {}",
                        alert.message
                    );
                    let mut recent = self.recent.lock();
                    if recent.len() >= RECENT_RESOLVED {
                        recent.pop_front();
                    }
                    recent.push_back(alert.clone());
                    drop(recent);
                    let op = StoreOp::Resolve {
                        id: alert.id,
                        at_ms: alert.resolved_at_ms.unwrap_or_else(unix_ms),
                        resolution: alert.resolution.clone().unwrap_or_default(),
                    };
                    (
                        AlertEvent {
                            event: EventKind::Resolved,
                            alert,
                        },
                        op,
                    )
                }
            };
            self.publish(event);
            self.queue_write(op);
        }
    }

    fn publish(&self, event: AlertEvent) {
        if let Some(webhook) = &self.webhook
            && event.event != EventKind::Acked
        {
            webhook.offer(&event);
        }
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    fn queue_write(&self, op: StoreOp) {
        if self.store.get().is_none() {
            return;
        }
        let mut pending = self.pending.lock();
        if pending.len() >= MAX_PENDING_WRITES {
            pending.pop_front();
            self.counters
                .store_writes_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        pending.push_back(op);
    }

    /// Hands pending writes to the store's queue while it has room; the rest waits for the next evaluation.
    fn flush_writes(&self) {
        let Some(link) = self.store.get() else {
            return;
        };
        let mut pending = self.pending.lock();
        while let Some(op) = pending.pop_front() {
            let write = match &op {
                StoreOp::Insert(alert) => link.sink.queue_alert_insert(alert.clone()),
                StoreOp::Resolve {
                    id,
                    at_ms,
                    resolution,
                } => link
                    .sink
                    .queue_alert_resolution(*id, *at_ms, resolution.clone()),
                StoreOp::Ack { id, at_ms } => link.sink.queue_alert_ack(*id, *at_ms),
            };
            if !write {
                pending.push_front(op);
                break;
            }
        }
    }

    /// Acknowledges an active alert (kept until it resolves; stored). `None` when `id` is not active.
    pub fn ack_active(&self, id: i64) -> Option<Alert> {
        let now = unix_ms();
        let alert = self.evaluator.lock().ack(id, now)?;
        self.active.lock().insert(id, alert.clone());
        self.publish(AlertEvent {
            event: EventKind::Acked,
            alert: alert.clone(),
        });
        self.queue_write(StoreOp::Ack { id, at_ms: now });
        self.flush_writes();
        Some(alert)
    }

    /// The store's sink and readers, when the store runs.
    pub(crate) fn store_link(&self) -> Option<&StoreLink> {
        self.store.get()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn subscribers_see_fired_and_resolved_events() {
        let engine = AlertEngine::new(&AlertsConfig {
            rss_budget_bytes: 0,
            ..AlertsConfig::default()
        });
        let mut events = engine.subscribe();
        let listener = FeedListener {
            feed: Arc::clone(&engine.feed),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        listener.context(&[ContextUpdate {
            session_id: 4,
            tokens: 85,
            window: 100,
        }]);
        engine.evaluate(Sample::default());
        let event = events.recv().await.unwrap();
        assert_eq!(event.event, EventKind::Fired);
        assert_eq!(event.alert.session_id, Some(4));
        assert_eq!(engine.active().len(), 1);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], "fired");
        assert_eq!(json["alert"]["kind"], "context");
        assert_eq!(json["alert"]["threshold"], 0.8);
        let acked = engine.ack_active(event.alert.id).unwrap();
        assert!(acked.acked_at_ms.is_some());
        assert_eq!(events.recv().await.unwrap().event, EventKind::Acked);
        listener.deleted(&[4]);
        engine.evaluate(Sample::default());
        let event = events.recv().await.unwrap();
        assert_eq!(event.event, EventKind::Resolved);
        assert!(event.alert.acked_at_ms.is_some());
        assert!(engine.active().is_empty());
        assert_eq!(engine.recent_resolved().len(), 1);
        assert_eq!(engine.stats().fired, 1);
        assert_eq!(engine.stats().resolved, 1);
    }
}
