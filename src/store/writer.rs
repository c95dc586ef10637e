//! The single writer: a bounded queue filled on the request path, drained by one thread that commits batches.
//!
//! A batch is committed when it holds `batch_rows` records or `batch_bytes` bytes (more while the writer is
//! behind: [`BACKLOG_GROWTH`]), or `flush_interval` after its first record arrived. When the database cannot be written (disk full, read-only, file gone or unopenable;
//! PostgreSQL down, restarting or unreachable)
//! the writer holds the records in memory — at most `queue_capacity` records and `queue_bytes` bytes — and
//! retries with backoff, reopening the file, until the disk recovers; then it writes them in order. Records
//! beyond that bound are dropped and counted, so memory stays bounded and the proxy never waits. Any other
//! failure (a record SQLite refuses) is retried [`MAX_BATCH_ATTEMPTS`] times, then its batch is dropped.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use super::db::Db;
use super::pg::{Location, PgStore};
use super::query::{self, Session};
use super::sessions::SessionResolver;
use super::{BatchReport, Store, StoreError, unix_ms};
use crate::accounting::{RecordSink, RequestRecord};
use crate::config::{Config, SessionMode, StoreConfig};
use crate::util::LogThrottle;

/// How long the writer sleeps between looks at the queue while it fills a batch: the most a command (a session
/// change from the API) or the shutdown waits behind an open batch.
const FILL_POLL: Duration = Duration::from_millis(5);
/// While more than a batch waits in the queue, batches may grow to this many times `batch_rows` and
/// `batch_bytes`: a writer that fell behind catches up in fewer, larger transactions (each batch pays a commit,
/// the session look-ups and, on PostgreSQL, its round trips). The records are in memory already, in the queue.
const BACKLOG_GROWTH: usize = 8;
/// A batch that failed this many times for a reason other than the disk is dropped.
pub const MAX_BATCH_ATTEMPTS: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often retention runs when configured.
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The writer's settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub queue_capacity: usize,
    /// Records queued may not hold more than this many bytes in total (approximately).
    pub queue_bytes: usize,
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub flush_interval: Duration,
    pub session_mode: SessionMode,
    pub preview_chars: usize,
    pub retention_days: Option<u32>,
    /// Context window per catalog model key.
    pub context_windows: HashMap<String, u64>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions::from_config(&StoreConfig::default())
    }
}

impl WriterOptions {
    pub fn from_config(store: &StoreConfig) -> WriterOptions {
        WriterOptions {
            queue_capacity: store.queue_capacity,
            queue_bytes: 256 * 1024 * 1024,
            batch_rows: store.batch_rows,
            batch_bytes: 4 * 1024 * 1024,
            flush_interval: store.flush_interval,
            session_mode: store.session_mode,
            preview_chars: store.preview_chars,
            retention_days: store.retention_days,
            context_windows: HashMap::new(),
        }
    }

    /// The options of a whole configuration, with each model's context window.
    pub fn for_config(config: &Config) -> WriterOptions {
        let mut options = WriterOptions::from_config(&config.store);
        options.context_windows = config
            .models
            .values()
            .map(|m| (m.key.clone(), m.max_context_size))
            .collect();
        options
    }
}

/// The writer's counters since start.
#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    queued_bytes: AtomicUsize,
    offered: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    batches: AtomicU64,
    write_errors: AtomicU64,
    held: AtomicUsize,
    drop_log: LogThrottle,
    last_error: Mutex<Option<(i64, String)>>,
}

/// A snapshot of the writer's counters.
#[derive(Debug, Clone, Serialize)]
pub struct WriterStats {
    /// Records waiting in the queue.
    pub queued: usize,
    pub queued_bytes: usize,
    pub queue_capacity: usize,
    pub offered: u64,
    pub written: u64,
    /// Records lost: queue full, store shut down, or a batch that could not be written.
    pub dropped: u64,
    pub batches: u64,
    pub write_errors: u64,
    /// Records kept in memory while the database cannot be written; written once it can.
    pub held: usize,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    /// The writer has an open, working database.
    pub healthy: bool,
}

/// What the writer thread works on; commands get it mutably.
pub struct WriterState {
    location: Location,
    /// The SQLite store (when the location is a file).
    store: Option<Store>,
    /// The PostgreSQL store (when the location is a URL).
    pg: Option<PgStore>,
    /// The file the resolver's session ids belong to.
    identity: Option<(u64, u64)>,
    pub resolver: SessionResolver,
}

impl WriterState {
    /// The open SQLite database, reopening it when needed. On PostgreSQL: [`StoreError::NotOnPostgres`] (the
    /// commands that need it are SQLite-only so far).
    pub fn store(&mut self) -> Result<&mut Store, StoreError> {
        let path = match &self.location {
            Location::Sqlite(path) => path.clone(),
            Location::Postgres(_) => return Err(StoreError::NotOnPostgres("this operation")),
        };
        if let Some(store) = &self.store
            && store.check_file().is_err()
        {
            tracing::warn!(path = %path.display(), "database file removed or replaced; reopening");
            self.store = None;
        }
        if self.store.is_none() {
            let store = Store::open(&path)?;
            if store.identity() != self.identity {
                // Another file (recreated after a loss): its session ids are not the ones remembered.
                tracing::warn!(path = %path.display(), "a different database file: session memory reset");
                self.resolver.reset();
                self.identity = store.identity();
            }
            self.store = Some(store);
        }
        match self.store.as_mut() {
            Some(store) => Ok(store),
            None => Err(StoreError::Closed),
        }
    }

    /// The store and the session resolver together.
    pub fn parts(&mut self) -> Result<(&mut Store, &mut SessionResolver), StoreError> {
        self.store()?;
        match self.store.as_mut() {
            Some(store) => Ok((store, &mut self.resolver)),
            None => Err(StoreError::Closed),
        }
    }

    /// The PostgreSQL store, reconnecting when needed.
    fn pg(&mut self) -> Result<&mut PgStore, StoreError> {
        let Location::Postgres(url) = &self.location else {
            return Err(StoreError::Other("not a PostgreSQL store".into()));
        };
        if self.pg.is_none() {
            self.pg = Some(PgStore::open(url)?);
        }
        self.pg.as_mut().ok_or(StoreError::Closed)
    }

    /// Writes a batch on whichever backend the store is.
    fn write_batch(&mut self, batch: &[Arc<RequestRecord>]) -> Result<BatchReport, StoreError> {
        if self.location.is_postgres() {
            self.pg()?;
            match self.pg.as_mut() {
                Some(pg) => pg.write_batch(batch, &mut self.resolver),
                None => Err(StoreError::Closed),
            }
        } else {
            let (store, resolver) = self.parts()?;
            store.write_batch(batch, resolver)
        }
    }

    /// Runs shared statements on the writer's connection, either backend.
    pub fn with_db<T>(
        &mut self,
        f: impl FnOnce(&dyn Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.location.is_postgres() {
            self.pg()?.with(f)
        } else {
            f(self.store()?.connection())
        }
    }

    /// Runs `f` in one transaction on whichever backend the store is; on failure the resolver forgets what the
    /// transaction created.
    pub fn transact<T>(
        &mut self,
        f: impl FnOnce(&dyn Db, &mut SessionResolver) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = if self.location.is_postgres() {
            self.pg()?;
            match (self.pg.as_mut(), &mut self.resolver) {
                (Some(pg), resolver) => pg.transact(|db| f(db, resolver)),
                (None, _) => Err(StoreError::Closed),
            }
        } else {
            self.store()?;
            match (self.store.as_mut(), &mut self.resolver) {
                (Some(store), resolver) => store.transact(|db| f(db, resolver)),
                (None, _) => Err(StoreError::Closed),
            }
        };
        if result.is_err() {
            self.resolver.rollback();
        }
        result
    }

    /// Forgets the connections (after an error): the next use reopens them.
    fn disconnect(&mut self) {
        self.store = None;
        self.pg = None;
    }
}

type Command = Box<dyn FnOnce(&mut WriterState) + Send>;

/// A change to sessions made through the API (the writer reports its own batches with
/// [`StoreListener::batch_committed`]).
#[derive(Debug, Clone)]
pub enum SessionChange {
    Created(Session),
    Updated(Session),
    Deleted(Vec<i64>),
    /// The active session now (`None`: none is).
    Activated(Option<i64>),
}

/// Told about what the store committed (the live dashboard). Called on the writer thread or an API task:
/// implementations hand the news to a bounded queue and return at once.
pub trait StoreListener: Send + Sync {
    /// Whether anybody looks now: when not, the writer does not read the changed sessions back.
    fn watching(&self) -> bool {
        true
    }
    /// A batch of records was committed: where each went, and the sessions it changed, as they are now.
    fn batch_committed(
        &self,
        assignments: &[(u64, Option<i64>)],
        sessions: Vec<Session>,
        created: &[i64],
    );
    fn session_changed(&self, change: SessionChange);
}

type SharedListener = Arc<OnceLock<Arc<dyn StoreListener>>>;

enum Message {
    Record(Arc<RequestRecord>, usize),
    Command(Command),
    Shutdown,
}

/// The record sink that feeds the store. Cheap to share (`Arc`).
pub struct StoreSink {
    sender: SyncSender<Message>,
    counters: Arc<Counters>,
    closed: AtomicBool,
    healthy: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    options: WriterOptions,
    location: Location,
    listener: SharedListener,
}

impl StoreSink {
    /// Opens the SQLite database (errors here are reported: a newer schema, an unusable path) and starts the
    /// writer.
    pub fn start(path: &Path, options: WriterOptions) -> Result<Arc<StoreSink>, StoreError> {
        StoreSink::start_at(&Location::Sqlite(path.to_path_buf()), options)
    }

    /// Opens the store at `location` (SQLite file or PostgreSQL URL: unreachable or a newer schema are reported
    /// here) and starts the writer.
    pub fn start_at(
        location: &Location,
        options: WriterOptions,
    ) -> Result<Arc<StoreSink>, StoreError> {
        let (store, pg) = match location {
            Location::Sqlite(path) => (Some(Store::open(path)?), None),
            Location::Postgres(url) => (None, Some(PgStore::open(url)?)),
        };
        let identity = store.as_ref().and_then(Store::identity);
        let (sender, receiver) = mpsc::sync_channel(options.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let healthy = Arc::new(AtomicBool::new(true));
        let stopping = Arc::new(AtomicBool::new(false));
        let listener: SharedListener = Arc::new(OnceLock::new());
        let writer = Writer {
            listener: Arc::clone(&listener),
            state: WriterState {
                location: location.clone(),
                store,
                pg,
                identity,
                resolver: SessionResolver::new(
                    options.session_mode,
                    options.preview_chars,
                    options.context_windows.clone(),
                ),
            },
            receiver,
            counters: Arc::clone(&counters),
            healthy: Arc::clone(&healthy),
            stopping: Arc::clone(&stopping),
            options: options.clone(),
            backoff: INITIAL_BACKOFF,
            retry_at: None,
            held: VecDeque::new(),
            held_bytes: 0,
            next_retention: options.retention_days.map(|_| Instant::now()),
        };
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Other(format!("cannot start the store writer: {e}")))?;
        Ok(Arc::new(StoreSink {
            sender,
            counters,
            closed: AtomicBool::new(false),
            healthy,
            stopping,
            thread: Mutex::new(Some(thread)),
            options,
            location: location.clone(),
            listener,
        }))
    }

    /// Registers the one listener told about commits and session changes (later calls are ignored).
    pub fn set_listener(&self, listener: Arc<dyn StoreListener>) {
        if self.listener.set(listener).is_err() {
            tracing::warn!("the store already has a listener");
        }
    }

    /// Tells the listener about a change made through the API.
    pub fn notify(&self, change: SessionChange) {
        if let Some(listener) = self.listener.get() {
            listener.session_changed(change);
        }
    }

    /// Where the store is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The SQLite file (`None` on PostgreSQL).
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.location {
            Location::Sqlite(path) => Some(path),
            Location::Postgres(_) => None,
        }
    }

    pub fn options(&self) -> &WriterOptions {
        &self.options
    }

    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        let last = c.last_error.lock().clone();
        WriterStats {
            queued: c.queued.load(Ordering::Relaxed),
            queued_bytes: c.queued_bytes.load(Ordering::Relaxed),
            queue_capacity: self.options.queue_capacity,
            offered: c.offered.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            held: c.held.load(Ordering::Relaxed),
            last_error_at_ms: last.as_ref().map(|(at, _)| *at),
            last_error: last.map(|(_, message)| message),
            healthy: self.healthy.load(Ordering::Relaxed),
        }
    }

    fn drop_records(&self, n: u64, why: &str) {
        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
        log_drop(&self.counters, n, why);
    }

    /// Runs `f` on the writer thread, after every record queued before it (blocking: not on an async worker).
    pub(super) fn execute_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriterState) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        let command: Command = Box::new(move |state| {
            let _ = reply.send(f(state));
        });
        self.sender
            .send(Message::Command(command))
            .map_err(|_| StoreError::Closed)?;
        answer.recv().map_err(|_| StoreError::Closed)?
    }

    /// Queues `f` for the writer thread without waiting, for callers that must never block. False when the
    /// queue is full or the store is closed: the caller keeps or counts what was not queued.
    pub(super) fn try_execute(&self, f: impl FnOnce(&mut WriterState) + Send + 'static) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.sender.try_send(Message::Command(Box::new(f))).is_ok()
    }

    /// Queues `f` for the writer thread without waiting: `false` (and `f` never runs) when the store is shut
    /// down or its queue is full. `bytes` is what `f` holds, counted against the queue's byte bound.
    pub fn try_execute_sized(
        &self,
        bytes: usize,
        f: impl FnOnce(&mut WriterState) + Send + 'static,
    ) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let counters = &self.counters;
        let before = counters.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.options.queue_bytes {
            counters.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        let held = Arc::clone(&self.counters);
        let command: Command = Box::new(move |state| {
            held.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            f(state);
        });
        match self.sender.try_send(Message::Command(command)) {
            Ok(()) => true,
            Err(_) => {
                counters.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                false
            }
        }
    }

    /// [`StoreSink::execute_blocking`] from async code.
    pub(super) async fn execute<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut WriterState) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.execute_blocking(f))
            .await
            .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
    }

    /// Waits until every record offered so far is written (or dropped).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.execute_blocking(|_| Ok(()))
    }

    /// Closes the queue, lets the writer commit everything queued, and joins it. Idempotent.
    pub fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let handle = self.thread.lock().take();
        // If the writer is failing, it drops what it cannot write instead of waiting out its backoff.
        self.stopping.store(true, Ordering::Release);
        let _ = self.sender.send(Message::Shutdown);
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the store writer panicked");
        }
        let stats = self.stats();
        tracing::info!(
            written = stats.written,
            dropped = stats.dropped,
            "store closed"
        );
    }
}

impl RecordSink for StoreSink {
    fn offer(&self, record: &Arc<RequestRecord>) {
        let counters = &self.counters;
        counters.offered.fetch_add(1, Ordering::Relaxed);
        if self.closed.load(Ordering::Acquire) {
            self.drop_records(1, "store shut down");
            return;
        }
        let bytes = approximate_size(record);
        let before = counters.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.options.queue_bytes {
            counters.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.drop_records(1, "store queue full (bytes)");
            return;
        }
        counters.queued.fetch_add(1, Ordering::Relaxed);
        match self
            .sender
            .try_send(Message::Record(Arc::clone(record), bytes))
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                counters.queued.fetch_sub(1, Ordering::Relaxed);
                counters.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.drop_records(1, "store queue full");
            }
        }
    }
}

/// Logs dropped records at most once per second.
fn log_drop(counters: &Counters, n: u64, why: &str) {
    if counters.drop_log.ready(Duration::from_secs(1)) {
        tracing::warn!(
            dropped = n,
            total_dropped = counters.dropped.load(Ordering::Relaxed),
            "{why}: request records dropped"
        );
    }
}

/// Memory a queued record holds, roughly.
fn approximate_size(record: &RequestRecord) -> usize {
    let strings = record.model.len()
        + record.provider.len()
        + record.upstream_model.len()
        + record.tokenizer.len()
        + record.error_kind.as_ref().map_or(0, String::len)
        + record.finish_reason.as_ref().map_or(0, String::len)
        + record.preview.as_ref().map_or(0, String::len)
        + record.client_session.as_ref().map_or(0, String::len)
        + record.virtual_key.as_ref().map_or(0, String::len);
    std::mem::size_of::<RequestRecord>() + strings + record.message_hashes.len() * 8
}

struct Writer {
    listener: SharedListener,
    state: WriterState,
    receiver: Receiver<Message>,
    counters: Arc<Counters>,
    healthy: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    options: WriterOptions,
    backoff: Duration,
    /// After a failure, no write is attempted before this instant.
    retry_at: Option<Instant>,
    /// Records waiting for the database to become writable again, oldest first.
    held: VecDeque<(Arc<RequestRecord>, usize)>,
    held_bytes: usize,
    next_retention: Option<Instant>,
}

enum After {
    Nothing,
    Command(Command),
    Shutdown,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Arc<RequestRecord>> = Vec::with_capacity(self.options.batch_rows);
        loop {
            self.housekeeping();
            self.retry_held();
            // Wait for the first record of a batch (or the next retry of held records).
            let wait = match (self.held.is_empty(), self.retry_at) {
                (false, Some(at)) => at
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(1), Duration::from_secs(1)),
                _ => Duration::from_secs(1),
            };
            let first = match self.receiver.recv_timeout(wait) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => Message::Shutdown,
            };
            let mut bytes = 0;
            let after = match first {
                Message::Record(record, size) => {
                    self.took(size);
                    bytes += size;
                    batch.push(record);
                    self.fill(&mut batch, &mut bytes)
                }
                Message::Command(command) => After::Command(command),
                Message::Shutdown => After::Shutdown,
            };
            self.commit(&mut batch);
            match after {
                After::Nothing => {}
                After::Command(command) => command(&mut self.state),
                After::Shutdown => {
                    // Records offered concurrently with the shutdown may still sit in the queue.
                    while let Ok(message) = self.receiver.try_recv() {
                        match message {
                            Message::Record(record, size) => {
                                self.took(size);
                                batch.push(record);
                                if batch.len() >= self.options.batch_rows {
                                    self.commit(&mut batch);
                                }
                            }
                            Message::Command(command) => command(&mut self.state),
                            Message::Shutdown => {}
                        }
                    }
                    self.commit(&mut batch);
                    self.retry_held();
                    if !self.held.is_empty() {
                        let n = self.held.len() as u64;
                        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                        self.counters.held.store(0, Ordering::Relaxed);
                        tracing::warn!(
                            records = n,
                            "store still unwritable at shutdown; held records dropped"
                        );
                        self.held.clear();
                    }
                    return;
                }
            }
        }
    }

    fn took(&self, size: usize) {
        self.counters.queued.fetch_sub(1, Ordering::Relaxed);
        self.counters
            .queued_bytes
            .fetch_sub(size, Ordering::Relaxed);
    }

    /// Adds records until the batch is full or its time is up; stops early for a command or the shutdown.
    /// Between looks at the queue the thread sleeps instead of waiting on it: a sender finds no receiver to wake,
    /// so a record costs the request path no futex call and the writer no wake-up per record (at 10,000 records
    /// a second, at most one look per [`FILL_POLL`] instead of one wake-up per record).
    fn fill(&mut self, batch: &mut Vec<Arc<RequestRecord>>, bytes: &mut usize) -> After {
        let deadline = Instant::now() + self.options.flush_interval;
        let growth = if self.counters.queued.load(Ordering::Relaxed) > self.options.batch_rows {
            BACKLOG_GROWTH
        } else {
            1
        };
        let (max_rows, max_bytes) = (
            self.options.batch_rows.saturating_mul(growth),
            self.options.batch_bytes.saturating_mul(growth),
        );
        loop {
            while batch.len() < max_rows && *bytes < max_bytes {
                match self.receiver.try_recv() {
                    Ok(Message::Record(record, size)) => {
                        self.took(size);
                        *bytes += size;
                        batch.push(record);
                    }
                    Ok(Message::Command(command)) => return After::Command(command),
                    Ok(Message::Shutdown) | Err(TryRecvError::Disconnected) => {
                        return After::Shutdown;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            if batch.len() >= self.options.batch_rows
                || *bytes >= self.options.batch_bytes
                || now >= deadline
            {
                return After::Nothing;
            }
            std::thread::sleep((deadline - now).min(FILL_POLL));
        }
    }

    /// Writes the batch, retrying with backoff; holds it while the disk is unavailable; drops it after
    /// [`MAX_BATCH_ATTEMPTS`] other failures.
    fn commit(&mut self, batch: &mut Vec<Arc<RequestRecord>>) {
        if batch.is_empty() {
            return;
        }
        if !self.held.is_empty() {
            // Older records are waiting: keep the order.
            self.hold(batch);
            return;
        }
        let mut attempts = 0;
        loop {
            self.wait_for_retry();
            let result = self.state.write_batch(batch);
            match result {
                Ok(report) => {
                    self.report(&report);
                    self.counters
                        .written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    batch.clear();
                    if !self.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!("store writable again");
                    }
                    self.backoff = INITIAL_BACKOFF;
                    self.retry_at = None;
                    return;
                }
                Err(error) => {
                    attempts += 1;
                    self.failed(&error);
                    if is_unavailable(&error) && !self.stopping.load(Ordering::Acquire) {
                        self.hold(batch);
                        return;
                    }
                    if attempts >= MAX_BATCH_ATTEMPTS || self.stopping.load(Ordering::Acquire) {
                        let n = batch.len() as u64;
                        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(records = n, %error, "store write failed; batch dropped");
                        batch.clear();
                        return;
                    }
                }
            }
        }
    }

    /// Tells the listener where the batch's records went, with the sessions as they are after the commit.
    fn report(&mut self, report: &BatchReport) {
        let Some(listener) = self.listener.get().cloned() else {
            return;
        };
        let sessions = if listener.watching() {
            self.state
                .with_db(|db| {
                    Ok(report
                        .sessions
                        .iter()
                        .filter_map(|id| query::get_session(db, *id).ok().flatten())
                        .collect())
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        listener.batch_committed(&report.assignments, sessions, &report.created);
    }

    /// Keeps `batch` for later, within the queue's bounds; what does not fit is dropped and counted.
    fn hold(&mut self, batch: &mut Vec<Arc<RequestRecord>>) {
        let mut dropped = 0u64;
        for record in batch.drain(..) {
            let size = approximate_size(&record);
            if self.held.len() >= self.options.queue_capacity
                || self.held_bytes + size > self.options.queue_bytes
            {
                dropped += 1;
                continue;
            }
            self.held_bytes += size;
            self.held.push_back((record, size));
        }
        self.counters.held.store(self.held.len(), Ordering::Relaxed);
        if dropped > 0 {
            self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
            log_drop(
                &self.counters,
                dropped,
                "store unwritable and its holding space full",
            );
        }
    }

    /// Writes held records, oldest first, once the backoff allows; stops at the first failure.
    fn retry_held(&mut self) {
        let mut attempts = 0;
        while !self.held.is_empty() {
            if self
                .retry_at
                .is_some_and(|at| Instant::now() < at && !self.stopping.load(Ordering::Acquire))
            {
                return;
            }
            let n = self.held.len().min(self.options.batch_rows);
            let chunk: Vec<Arc<RequestRecord>> = self
                .held
                .iter()
                .take(n)
                .map(|(r, _)| Arc::clone(r))
                .collect();
            let result = self.state.write_batch(&chunk);
            match result {
                Ok(report) => {
                    self.report(&report);
                    for (_, size) in self.held.drain(..n) {
                        self.held_bytes -= size;
                    }
                    self.counters.held.store(self.held.len(), Ordering::Relaxed);
                    self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    self.backoff = INITIAL_BACKOFF;
                    self.retry_at = None;
                    if self.held.is_empty() && !self.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!(records = n, "store writable again; held records written");
                    }
                }
                Err(error) => {
                    self.failed(&error);
                    attempts += 1;
                    let give_up = !is_unavailable(&error) && attempts >= MAX_BATCH_ATTEMPTS;
                    if give_up || self.stopping.load(Ordering::Acquire) {
                        if give_up {
                            for (_, size) in self.held.drain(..n) {
                                self.held_bytes -= size;
                            }
                            self.counters.held.store(self.held.len(), Ordering::Relaxed);
                            self.counters.dropped.fetch_add(n as u64, Ordering::Relaxed);
                            tracing::warn!(records = n, %error, "store write failed; batch dropped");
                            continue;
                        }
                        return;
                    }
                    if is_unavailable(&error) {
                        return;
                    }
                }
            }
        }
    }

    fn failed(&mut self, error: &StoreError) {
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        *self.counters.last_error.lock() = Some((unix_ms(), error.to_string()));
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::error!(%error, "store write failed; retrying with backoff");
        }
        // The connection may be broken (file gone, I/O error, server restarted): reopen it next time.
        self.state.disconnect();
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Sleeps until the backoff is over (cut short by the shutdown).
    fn wait_for_retry(&mut self) {
        let Some(at) = self.retry_at else {
            return;
        };
        while !self.stopping.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= at {
                break;
            }
            std::thread::sleep((at - now).min(Duration::from_millis(50)));
        }
    }

    fn housekeeping(&mut self) {
        let (Some(days), Some(due)) = (self.options.retention_days, self.next_retention) else {
            return;
        };
        if Instant::now() < due {
            return;
        }
        self.next_retention = Some(Instant::now() + RETENTION_EVERY);
        let result = super::apply_retention(&mut self.state, days, false);
        match result {
            Ok(outcome) => tracing::info!(
                days,
                sessions = outcome.sessions_deleted,
                requests = outcome.requests_deleted,
                "retention applied"
            ),
            Err(error) => tracing::warn!(%error, "retention failed"),
        }
    }
}

/// Whether `error` means the database cannot be written right now (full, read-only, gone, locked, an I/O error)
/// rather than that SQLite refused these records: the former is waited out, the latter is not retried forever.
fn is_unavailable(error: &StoreError) -> bool {
    use rusqlite::ErrorCode;
    match error {
        StoreError::Open { .. }
        | StoreError::Missing(_)
        | StoreError::Replaced(_)
        | StoreError::Connect { .. } => true,
        StoreError::Postgres(error) => super::pg::unavailable(error),
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
            failure.code,
            ErrorCode::ReadOnly
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::PermissionDenied
                | ErrorCode::FileLockingProtocolFailed
        ),
        _ => false,
    }
}
