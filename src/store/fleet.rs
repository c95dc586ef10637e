//! Several instances on one PostgreSQL database: one live view and one alert leader.
//!
//! - **Batches announced.** The writer NOTIFYs [`REQUESTS_CHANNEL`] inside each batch's transaction, so the
//!   notification is delivered at commit and only then ("if the transaction is rolled back, the notification is
//!   not sent": <https://www.postgresql.org/docs/current/sql-notify.html>). The payload names the instance, its
//!   newest row id and the batch's row count — a few dozen bytes, far under the 8000-byte limit — and the rows
//!   are read back by whoever wants them (each instance's rows come from its one writer, in id order, so a batch
//!   is that instance's `rows` newest rows up to `last_id`).
//! - **One connection per instance** ([`Fleet`]), on a thread of its own: `LISTEN`s to both channels
//!   (notifications read with the sync client's `Notifications::timeout_iter`:
//!   <https://docs.rs/postgres/latest/postgres/notifications/struct.Notifications.html>), skips its own
//!   batches, reads others' rows back only while someone wants them (a dashboard open, or the leader's context
//!   rule), publishes a small stats snapshot every [`STATS_EVERY`] and keeps its peers' latest.
//! - **Leader**: the same connection tries the session-level advisory lock [`LEADER_LOCK`] every
//!   [`LEADER_RETRY`] (`pg_try_advisory_lock`: held until released or the session ends:
//!   <https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-ADVISORY-LOCKS>). When the leader
//!   dies its connection closes, the server releases the lock, and another instance takes it on its next try.
//! - **Outages**: any error drops the connection (and with it the leadership), then reconnects with backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::db::{Pg, PgStatements};
use super::pg::PgUrl;
use super::{ContextListener, ContextUpdate, StoreError, query};

/// Where writers announce committed batches.
pub const REQUESTS_CHANNEL: &str = "kimi_proxy_requests";
/// Where instances publish their stats snapshots.
pub const STATS_CHANNEL: &str = "kimi_proxy_stats";
/// The advisory lock whose holder fires alerts (the migration lock is `…0001`).
pub const LEADER_LOCK: i64 = 0x6b69_6d69_0002;
/// How often a follower tries to become the leader.
pub const LEADER_RETRY: Duration = Duration::from_secs(2);
/// How often an instance publishes its stats.
pub const STATS_EVERY: Duration = Duration::from_secs(2);
/// A peer not heard of for this long is left out of the fleet view.
pub const PEER_EXPIRY: Duration = Duration::from_secs(10);
/// PostgreSQL's limit on a NOTIFY payload is 8000 bytes by default; snapshots stay below it.
const MAX_PAYLOAD: usize = 7900;
/// Longest wait for notifications before the loop looks at its timers again.
const TICK: Duration = Duration::from_millis(200);
/// Notifications handled per turn of the loop.
const NOTIFICATIONS_PER_TURN: usize = 256;
/// Rows read back per announced batch, at most.
const MAX_ROWS: i64 = 4096;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Announces a batch just written in `tx` (delivered when it commits).
pub(crate) fn notify_batch(
    tx: &mut postgres::Transaction<'_>,
    instance: &str,
    rows: usize,
) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_notify($1, json_build_object('instance', $2::text, 'rows', $3::bigint,
             'last_id', (SELECT max(id) FROM requests WHERE instance = $2::text))::text)",
        &[&REQUESTS_CHANNEL, &instance, &(rows as i64)],
    )?;
    Ok(())
}

#[derive(Deserialize)]
struct Announced {
    instance: String,
    rows: i64,
    last_id: Option<i64>,
}

/// Told about other instances' requests, as `requests` rows (JSON objects, flags as booleans), oldest first.
/// Called on the fleet thread: hand them to a bounded queue and return.
pub trait FleetListener: Send + Sync {
    /// Whether the rows are wanted now (when not, they are not even read).
    fn watching(&self) -> bool;
    fn requests(&self, rows: Vec<Map<String, Value>>);
}

/// What the fleet thread calls back.
pub struct FleetHooks {
    /// This instance's stats snapshot (a JSON object), published every [`STATS_EVERY`].
    pub snapshot: Box<dyn Fn() -> Value + Send + Sync>,
    /// The alert engine's context feed: the leader hears other instances' sessions through it.
    pub context: Option<Arc<dyn ContextListener>>,
}

struct Peer {
    heard: Instant,
    snapshot: Value,
}

/// The fleet as one instance sees it. Shared (`Arc`); the thread stops with [`Fleet::stop`].
pub struct Fleet {
    instance: Arc<str>,
    leader: AtomicBool,
    connected: AtomicBool,
    stopping: AtomicBool,
    peers: Mutex<HashMap<String, Peer>>,
    listener: OnceLock<Arc<dyn FleetListener>>,
    /// Batches of other instances announced, rows read back, reconnections.
    announced: AtomicU64,
    rows_read: AtomicU64,
    reconnects: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Fleet {
    /// Starts the fleet thread for `instance` on the database at `url`.
    pub fn start(
        url: &PgUrl,
        instance: Arc<str>,
        hooks: FleetHooks,
    ) -> Result<Arc<Fleet>, StoreError> {
        let fleet = Arc::new(Fleet {
            instance,
            leader: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            peers: Mutex::new(HashMap::new()),
            listener: OnceLock::new(),
            announced: AtomicU64::new(0),
            rows_read: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            thread: Mutex::new(None),
        });
        let worker = Arc::clone(&fleet);
        let url = url.clone();
        let handle = std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || worker.run(&url, &hooks))
            .map_err(|e| StoreError::Other(format!("cannot start the fleet thread: {e}")))?;
        *fleet.thread.lock() = Some(handle);
        Ok(fleet)
    }

    /// Registers the one listener of other instances' requests (later calls are ignored).
    pub fn set_listener(&self, listener: Arc<dyn FleetListener>) {
        let _ = self.listener.set(listener);
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether this instance holds the leader lock now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Other instances heard of within [`PEER_EXPIRY`]: (their snapshot, milliseconds since heard), by id.
    pub fn peers(&self) -> Vec<(Value, u64)> {
        let mut peers: Vec<(String, Value, u64)> = self
            .peers
            .lock()
            .iter()
            .filter(|(_, p)| p.heard.elapsed() < PEER_EXPIRY)
            .map(|(id, p)| {
                (
                    id.clone(),
                    p.snapshot.clone(),
                    p.heard.elapsed().as_millis() as u64,
                )
            })
            .collect();
        peers.sort_by(|a, b| a.0.cmp(&b.0));
        peers.into_iter().map(|(_, s, age)| (s, age)).collect()
    }

    /// The fleet connection's own figures, for `/api/stats`.
    pub fn status(&self) -> Value {
        serde_json::json!({
            "instance": &*self.instance,
            "leader": self.is_leader(),
            "connected": self.connected.load(Ordering::Relaxed),
            "batches_announced": self.announced.load(Ordering::Relaxed),
            "rows_read": self.rows_read.load(Ordering::Relaxed),
            "reconnects": self.reconnects.load(Ordering::Relaxed),
        })
    }

    /// Stops the thread and closes its connection (releasing the leadership at once). Blocking, idempotent.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let handle = self.thread.lock().take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the fleet thread panicked");
        }
        self.leader.store(false, Ordering::Release);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn run(&self, url: &PgUrl, hooks: &FleetHooks) {
        let mut backoff = Duration::from_millis(250);
        let mut logged = false;
        while !self.stopping() {
            let started = Instant::now();
            let result = self.session(url, hooks);
            let was_leader = self.leader.swap(false, Ordering::AcqRel);
            self.connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => return,
                Err(error) => {
                    if was_leader {
                        tracing::warn!(%error, "fleet: connection lost; no longer the leader");
                    } else if !logged {
                        tracing::warn!(%error, "fleet: connection lost; reconnecting");
                    }
                    logged = true;
                }
            }
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            if started.elapsed() > MAX_BACKOFF * 2 {
                backoff = Duration::from_millis(250);
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until && !self.stopping() {
                std::thread::sleep(Duration::from_millis(50));
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: returns `Ok` when stopped, an error when the connection failed.
    fn session(&self, url: &PgUrl, hooks: &FleetHooks) -> Result<(), StoreError> {
        let mut client = url.connect()?;
        client.batch_execute(&format!(
            "LISTEN {REQUESTS_CHANNEL}; LISTEN {STATS_CHANNEL}"
        ))?;
        tracing::info!(instance = %self.instance, "fleet: listening for the other instances");
        let mut statements = PgStatements::default();
        let try_lock = client.prepare("SELECT pg_try_advisory_lock($1)")?;
        let publish = client.prepare("SELECT pg_notify($1, $2)")?;
        let mut next_try = Instant::now();
        let mut next_stats = Instant::now();
        loop {
            if self.stopping() {
                return Ok(());
            }
            let now = Instant::now();
            if !self.is_leader() && now >= next_try {
                next_try = now + LEADER_RETRY;
                let got: bool = client.query_one(&try_lock, &[&LEADER_LOCK])?.try_get(0)?;
                if got {
                    self.leader.store(true, Ordering::Release);
                    tracing::info!(instance = %self.instance, "fleet: this instance is the leader (alerts fire here)");
                }
            }
            // Connected counts from after the first try for the lock: whoever reads it sees the leadership settled.
            self.connected.store(true, Ordering::Relaxed);
            if now >= next_stats {
                next_stats = now + STATS_EVERY;
                let mut snapshot = (hooks.snapshot)();
                if let Some(object) = snapshot.as_object_mut() {
                    object.insert("instance".into(), Value::from(&*self.instance));
                    object.insert("leader".into(), Value::from(self.is_leader()));
                }
                let text = snapshot.to_string();
                if text.len() <= MAX_PAYLOAD {
                    client.execute(&publish, &[&STATS_CHANNEL, &text])?;
                }
            }
            let mut received = Vec::new();
            {
                let mut notifications = client.notifications();
                let mut iter = notifications.timeout_iter(TICK);
                while let Some(note) = fallible_next(&mut iter)? {
                    received.push((note.channel().to_string(), note.payload().to_string()));
                    if received.len() >= NOTIFICATIONS_PER_TURN {
                        break;
                    }
                }
            }
            if client.is_closed() {
                return Err(StoreError::Other("the fleet connection closed".into()));
            }
            for (channel, payload) in received {
                if channel == STATS_CHANNEL {
                    self.heard_stats(&payload);
                } else if channel == REQUESTS_CHANNEL
                    && let Err(error) =
                        self.announced_batch(&mut client, &mut statements, hooks, &payload)
                {
                    // A batch that cannot be read back is skipped; only a lost connection ends the session (and
                    // with it the leadership).
                    if client.is_closed() {
                        return Err(error);
                    }
                    tracing::warn!(%error, "fleet: cannot read another instance's batch");
                }
            }
        }
    }

    fn heard_stats(&self, payload: &str) {
        let Ok(snapshot) = serde_json::from_str::<Value>(payload) else {
            return;
        };
        let Some(id) = snapshot.get("instance").and_then(Value::as_str) else {
            return;
        };
        if id == &*self.instance {
            return;
        }
        let id = id.to_string();
        self.peers.lock().insert(
            id,
            Peer {
                heard: Instant::now(),
                snapshot,
            },
        );
    }

    /// Another instance's batch: its rows to the live view, its sessions' context to the leader's alerts.
    fn announced_batch(
        &self,
        client: &mut postgres::Client,
        statements: &mut PgStatements,
        hooks: &FleetHooks,
        payload: &str,
    ) -> Result<(), StoreError> {
        let Ok(batch) = serde_json::from_str::<Announced>(payload) else {
            return Ok(());
        };
        if batch.instance == *self.instance {
            return Ok(());
        }
        self.announced.fetch_add(1, Ordering::Relaxed);
        let listener = self.listener.get().filter(|l| l.watching());
        let context = hooks.context.as_ref().filter(|_| self.is_leader());
        let (Some(last_id), true) = (batch.last_id, listener.is_some() || context.is_some()) else {
            return Ok(());
        };
        let db = Pg::new(client, statements);
        let mut rows =
            query::instance_rows(&db, &batch.instance, last_id, batch.rows.clamp(0, MAX_ROWS))?;
        rows.reverse();
        self.rows_read
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        if let Some(context) = context {
            let mut sessions: Vec<i64> = rows
                .iter()
                .filter_map(|r| r.get("session_id").and_then(Value::as_i64))
                .collect();
            sessions.sort_unstable();
            sessions.dedup();
            let mut updates = Vec::with_capacity(sessions.len());
            for id in sessions {
                if let Some(session) = query::get_session(&db, id)?
                    && let Some(window) = session.context_window
                {
                    updates.push(ContextUpdate {
                        session_id: id,
                        tokens: session.context_tokens.max(0) as u64,
                        window: window.max(0) as u64,
                    });
                }
            }
            if !updates.is_empty() {
                context.context(&updates);
            }
        }
        if let Some(listener) = listener {
            listener.requests(rows);
        }
        Ok(())
    }
}

fn fallible_next(
    iter: &mut postgres::notifications::TimeoutIter<'_>,
) -> Result<Option<postgres::Notification>, StoreError> {
    use postgres::fallible_iterator::FallibleIterator;
    Ok(iter.next()?)
}
