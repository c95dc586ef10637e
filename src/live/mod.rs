//! The live hub behind the dashboard's WebSocket (`/ws`, docs/ws-protocol.md).
//!
//! What happens elsewhere — a request starting (request path), finishing (accounting), a batch committed (store
//! writer), a session changed (API) — is handed to the hub's bounded queue with `try_send`, and only while at
//! least one dashboard is connected. One task numbers each event, serialises it once and broadcasts the bytes;
//! each client reads them from a bounded ring at its own pace and is cut off when it falls behind or its socket
//! stops accepting data. Nobody ever waits for a dashboard.

pub mod protocol;
pub mod socket;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::accounting::in_flight::{LiveRequest, StartListener};
use crate::accounting::{RecordSink, Refusal, RequestRecord};
use crate::proxy::ProxyState;
use crate::store::fleet::FleetListener;
use crate::store::query::Session;
use crate::store::{Readers, SessionChange, StoreListener, StoreSink};
use protocol::{Envelope, RequestView};

/// Events waiting for the hub task. Full: the event is lost (counted) and the next event skips a sequence
/// number, so that clients notice and ask for a fresh snapshot.
const INPUT_CAPACITY: usize = 8192;
/// Events a client may fall behind by before it is cut off.
const CLIENT_BACKLOG: usize = 1024;
/// Record → session assignments remembered for snapshots (the recent ring holds 256 records).
const ASSIGNMENTS_KEPT: usize = 1024;
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
const STATS_EVERY: Duration = Duration::from_secs(1);

/// One serialised event, shared by every client.
#[derive(Clone)]
pub struct Frame {
    pub seq: u64,
    pub text: Utf8Bytes,
    /// When the hub published it (the `dashboard_delivery` histogram starts here).
    pub published: std::time::Instant,
}

enum Input {
    Started(Arc<LiveRequest>),
    Finished(Arc<RequestRecord>),
    Refused(Arc<Refusal>),
    Stored {
        assignments: Vec<(u64, Option<i64>)>,
        sessions: Vec<Session>,
        created: Vec<i64>,
    },
    Session(SessionChange),
    /// Other instances' requests, as stored rows (the fleet connection).
    Remote(Vec<serde_json::Map<String, serde_json::Value>>),
}

/// What the hub reads of the store: its writer's queue (for its figures) and read connections of its own.
pub(crate) struct HubStore {
    pub(crate) sink: Arc<StoreSink>,
    pub(crate) readers: Arc<Readers>,
}

/// The hub: shared by the proxy (as listener and sink), the store (listener) and every WebSocket task.
pub struct Hub {
    inputs: mpsc::Sender<Input>,
    frames: broadcast::Sender<Frame>,
    /// The sequence number of the last event broadcast.
    last_seq: AtomicU64,
    lost: AtomicU64,
    cut_off: AtomicU64,
    /// Recent record → session assignments, newest last.
    assignments: Mutex<VecDeque<(u64, Option<i64>)>>,
    pub(crate) state: Arc<ProxyState>,
    pub(crate) store: Option<HubStore>,
    pub(crate) started_at_ms: i64,
    /// Cancelled at shutdown: clients are told the server is going away.
    pub(crate) closing: CancellationToken,
}

impl Hub {
    /// Starts the hub task and registers the hub with the accounting and the store.
    pub fn start(state: Arc<ProxyState>, store: Option<Arc<StoreSink>>) -> Arc<Hub> {
        let (inputs, receiver) = mpsc::channel(INPUT_CAPACITY);
        let (frames, _) = broadcast::channel(CLIENT_BACKLOG);
        let hub = Arc::new(Hub {
            inputs,
            frames,
            last_seq: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            cut_off: AtomicU64::new(0),
            assignments: Mutex::new(VecDeque::with_capacity(ASSIGNMENTS_KEPT)),
            state: Arc::clone(&state),
            store: store.as_ref().map(|sink| HubStore {
                sink: Arc::clone(sink),
                readers: Arc::new(Readers::at(sink.location())),
            }),
            started_at_ms: crate::util::unix_ms(),
            closing: CancellationToken::new(),
        });
        state
            .accounting
            .in_flight
            .set_listener(Arc::clone(&hub) as Arc<dyn StartListener>);
        state
            .accounting
            .add_sink(Arc::clone(&hub) as Arc<dyn RecordSink>);
        if let Some(sink) = &store {
            sink.set_listener(Arc::clone(&hub) as Arc<dyn StoreListener>);
        }
        let worker = Worker {
            hub: Arc::clone(&hub),
            lost_seen: 0,
            progress_sent: HashMap::new(),
        };
        tokio::spawn(worker.run(receiver));
        hub
    }

    /// Dashboards connected now.
    pub fn clients(&self) -> usize {
        self.client_gauge().load(Ordering::Relaxed)
    }

    fn client_gauge(&self) -> &AtomicUsize {
        &self.state.accounting.monitor.dashboard_clients
    }

    fn watched(&self) -> bool {
        self.clients() > 0
    }

    /// Clients disconnected for being too slow, since start.
    pub fn slow_clients_cut(&self) -> u64 {
        self.cut_off.load(Ordering::Relaxed)
    }

    /// Events lost because the hub's queue was full, since start.
    pub fn lost_events(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Tells connected clients the server is going away.
    pub fn close(&self) {
        self.closing.cancel();
    }

    fn push(&self, input: Input) {
        if self.inputs.try_send(input).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The session a recent record went to, if the store has committed it.
    pub(crate) fn session_of(&self, record_id: u64) -> Option<i64> {
        self.assignments
            .lock()
            .iter()
            .rev()
            .find(|(id, _)| *id == record_id)
            .and_then(|(_, session)| *session)
    }

    pub(crate) fn sessions_of(&self) -> HashMap<u64, Option<i64>> {
        self.assignments.lock().iter().copied().collect()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.frames.subscribe()
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Counts one more client unless `max` are connected already.
    pub(crate) fn try_connect(self: &Arc<Self>, max: usize) -> Option<ClientGuard> {
        self.client_gauge()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientGuard(Arc::clone(self)))
    }

    pub(crate) fn count_cut_off(&self) {
        self.cut_off.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a connected client for as long as it lives.
pub(crate) struct ClientGuard(Arc<Hub>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.client_gauge().fetch_sub(1, Ordering::Relaxed);
    }
}

impl StartListener for Hub {
    fn started(&self, request: &Arc<LiveRequest>) {
        if self.watched() {
            self.push(Input::Started(Arc::clone(request)));
        }
    }
}

impl RecordSink for Hub {
    fn offer(&self, record: &Arc<RequestRecord>) {
        if self.watched() {
            self.push(Input::Finished(Arc::clone(record)));
        }
    }

    fn refused(&self, refusal: &Arc<Refusal>) {
        if self.watched() {
            self.push(Input::Refused(Arc::clone(refusal)));
        }
    }
}

impl StoreListener for Hub {
    fn watching(&self) -> bool {
        self.watched()
    }

    fn batch_committed(
        &self,
        assignments: &[(u64, Option<i64>)],
        sessions: Vec<Session>,
        created: &[i64],
    ) {
        {
            let mut kept = self.assignments.lock();
            for assignment in assignments {
                if kept.len() == ASSIGNMENTS_KEPT {
                    kept.pop_front();
                }
                kept.push_back(*assignment);
            }
        }
        if self.watched() {
            self.push(Input::Stored {
                assignments: assignments.to_vec(),
                sessions,
                created: created.to_vec(),
            });
        }
    }

    fn session_changed(&self, change: SessionChange) {
        if self.watched() {
            self.push(Input::Session(change));
        }
    }
}

impl FleetListener for Hub {
    fn watching(&self) -> bool {
        self.watched()
    }

    fn requests(&self, rows: Vec<serde_json::Map<String, serde_json::Value>>) {
        if self.watched() && !rows.is_empty() {
            self.push(Input::Remote(rows));
        }
    }
}

/// The hub task's own state.
struct Worker {
    hub: Arc<Hub>,
    /// `hub.lost` when the last event was numbered.
    lost_seen: u64,
    /// Completion count last announced per open request.
    progress_sent: HashMap<u64, u64>,
}

impl Worker {
    async fn run(mut self, mut receiver: mpsc::Receiver<Input>) {
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stats = tokio::time::interval(STATS_EVERY);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let closing = self.hub.closing.clone();
        let mut alerts = self.hub.state.alerts.subscribe();
        let mut alerts_open = true;
        loop {
            tokio::select! {
                event = alerts.recv(), if alerts_open => match event {
                    Ok(event) => {
                        if self.hub.watched() {
                            self.publish("alert", &event);
                        }
                    }
                    // Missed alerts: count them, so the next event skips a number and clients resynchronise.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.hub.lost.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => alerts_open = false,
                },
                input = receiver.recv() => match input {
                    Some(input) => self.handle(input),
                    None => return,
                },
                _ = progress.tick() => self.progress(),
                _ = stats.tick() => {
                    if self.hub.watched() {
                        let stats = socket::stats(&self.hub);
                        self.publish("stats", &stats);
                    }
                }
                () = closing.cancelled() => return,
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Started(request) => self.publish(
                "request.started",
                &protocol::Started {
                    id: request.id,
                    started_at_ms: request.started_at_ms,
                    model: &request.model,
                    provider: &request.provider,
                    streaming: request.streaming,
                },
            ),
            Input::Finished(record) => {
                self.progress_sent.remove(&record.id);
                let kind = if protocol::is_failure(&record) {
                    "request.failed"
                } else {
                    "request.finished"
                };
                let session = self.hub.session_of(record.id);
                self.publish(kind, &RequestView::of(&record, session));
            }
            Input::Refused(refusal) => self.publish("request.refused", &*refusal),
            // As they finished elsewhere: already stored, so with their session.
            Input::Remote(rows) => {
                for row in &rows {
                    let (view, failed) = protocol::row_view(row);
                    let kind = if failed {
                        "request.failed"
                    } else {
                        "request.finished"
                    };
                    self.publish(kind, &view);
                }
            }
            Input::Stored {
                assignments,
                sessions,
                created,
            } => {
                let requests = assignments
                    .into_iter()
                    .map(|(id, session_id)| protocol::Assignment { id, session_id })
                    .collect();
                self.publish("request.stored", &protocol::Stored { requests });
                for session in &sessions {
                    let kind = if created.contains(&session.id) {
                        "session.created"
                    } else {
                        "session.updated"
                    };
                    self.publish(kind, &protocol::SessionData { session });
                    if session.active && created.contains(&session.id) {
                        self.publish(
                            "session.activated",
                            &protocol::Activated {
                                session_id: Some(session.id),
                            },
                        );
                    }
                }
            }
            Input::Session(change) => match change {
                SessionChange::Created(session) => {
                    self.publish(
                        "session.created",
                        &protocol::SessionData { session: &session },
                    );
                }
                SessionChange::Updated(session) => {
                    self.publish(
                        "session.updated",
                        &protocol::SessionData { session: &session },
                    );
                }
                SessionChange::Deleted(ids) => {
                    self.publish("session.deleted", &protocol::Deleted { ids: &ids });
                }
                SessionChange::Activated(session_id) => {
                    self.publish("session.activated", &protocol::Activated { session_id });
                }
            },
        }
    }

    /// One `request.progress` for every open request whose completion count moved since the last one.
    fn progress(&mut self) {
        if !self.hub.watched() {
            self.progress_sent.clear();
            return;
        }
        let now = crate::util::unix_ms();
        let mut moved = Vec::new();
        let mut seen = HashMap::with_capacity(self.progress_sent.len());
        self.hub
            .state
            .accounting
            .in_flight
            .each_progress(|id, started_at_ms, tokens| {
                if tokens > 0 && self.progress_sent.get(&id) != Some(&tokens) {
                    moved.push(protocol::ProgressItem {
                        id,
                        completion_tokens: tokens,
                        elapsed_ms: now.saturating_sub(started_at_ms),
                    });
                }
                seen.insert(id, tokens);
            });
        self.progress_sent = seen;
        if !moved.is_empty() {
            moved.sort_by_key(|p| p.id);
            self.publish("request.progress", &protocol::Progress { requests: moved });
        }
    }

    /// Numbers, serialises and broadcasts one event. After lost inputs, one number is skipped: clients see the
    /// gap and resynchronise.
    fn publish(&mut self, kind: &str, data: &impl Serialize) {
        let lost = self.hub.lost.load(Ordering::Relaxed);
        let mut seq = self.hub.last_seq.load(Ordering::Relaxed) + 1;
        if lost != self.lost_seen {
            self.lost_seen = lost;
            seq += 1;
        }
        let envelope = Envelope {
            kind,
            seq,
            ts: crate::util::unix_ms(),
            data,
        };
        let text = match serde_json::to_string(&envelope) {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(%error, kind, "cannot serialise a dashboard event");
                return;
            }
        };
        let started = std::time::Instant::now();
        self.hub.last_seq.store(seq, Ordering::Release);
        // No receiver: nobody is connected; the event is simply not needed.
        let _ = self.hub.frames.send(Frame {
            seq,
            text: Utf8Bytes::from(text),
            published: started,
        });
        self.hub.state.accounting.monitor.record(
            crate::monitor::Metric::Broadcast,
            started.elapsed().as_micros() as u64,
        );
    }
}
