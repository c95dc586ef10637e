//! The embedded SQLite store: every finished request, grouped into sessions with aggregates kept up to date,
//! and alerts.
//!
//! One writer: [`StoreSink`] takes records on the request path (a `try_send` into a bounded queue) and one
//! dedicated thread commits them in batches, resolving sessions in order ([`sessions`]). Readers (the HTTP API,
//! the command line) use their own read-only connections; WAL lets them read while the writer writes.

pub mod alerts;
pub mod cli;
mod commands;
pub use commands::SessionSettings;
pub mod export;
pub mod ledgers;
pub mod masks;
pub mod query;
pub mod responses;
pub mod schema;
pub mod sessions;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::accounting::RequestRecord;
pub use schema::LATEST_VERSION;
use sessions::{NewSession, SessionResolver, clamp, truncate_chars};
pub use writer::{SessionChange, StoreListener, StoreSink, WriterOptions, WriterStats};

/// How long a connection waits for a lock held by another before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A session's context after a commit: the latest request's size against the model's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextUpdate {
    pub session_id: i64,
    pub tokens: u64,
    pub window: u64,
}

/// Told, on the writer thread, each session's context after a commit and which sessions were deleted: what
/// the alert engine's context rule needs, without reading sessions back (the dashboard's richer feed is
/// [`writer::StoreListener`]). Must not block: hand over and return.
pub trait ContextListener: Send + Sync {
    /// Sessions whose context changed in a committed batch.
    fn context(&self, updates: &[ContextUpdate]);
    /// Sessions deleted (by the API, the command line or retention).
    fn deleted(&self, ids: &[i64]);
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the database {path} has schema version {found}, newer than the version {supported} this kimi-proxy supports; use a newer kimi-proxy or another database file"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "the database {path} has schema version {found}, older than {supported}: open it once for writing (`kimi-proxy serve`) to upgrade it"
    )]
    Outdated {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("no database at {0}")]
    Missing(PathBuf),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database file {0} was removed or replaced")]
    Replaced(PathBuf),
    #[error("no session {0}")]
    UnknownSession(i64),
    #[error("the store is shut down")]
    Closed,
    #[error("{0}")]
    Other(String),
}

/// The write side of the database: opened (created, migrated) by [`Store::open`].
pub struct Store {
    conn: Connection,
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl Store {
    /// Opens the database at `path` for writing, creating it when missing and upgrading an older schema in
    /// place. A database written by a newer version is refused.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_error)?;
        configure(&conn).map_err(open_error)?;
        migrate(&mut conn, path)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            identity: file_identity(path),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Device and inode of the file opened (unix).
    pub fn identity(&self) -> Option<(u64, u64)> {
        self.identity
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Fails when the file at the path is no longer the one this connection writes (deleted, replaced): the
    /// writer then reopens the path.
    pub fn check_file(&self) -> Result<(), StoreError> {
        match (self.identity, file_identity(&self.path)) {
            (Some(ours), Some(now)) if ours == now => Ok(()),
            (None, _) => Ok(()),
            _ => Err(StoreError::Replaced(self.path.clone())),
        }
    }

    /// Writes `records` in one transaction: each gets its session, session aggregates are updated once per
    /// session of the batch; after the commit the resolver's listener hears each session's context. On error
    /// nothing is written.
    pub fn write_batch(
        &mut self,
        records: &[Arc<RequestRecord>],
        resolver: &mut SessionResolver,
    ) -> Result<BatchReport, StoreError> {
        let result = self.write_batch_inner(records, resolver);
        if result.is_err() {
            resolver.rollback();
        }
        result
    }

    fn write_batch_inner(
        &mut self,
        records: &[Arc<RequestRecord>],
        resolver: &mut SessionResolver,
    ) -> Result<BatchReport, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        resolver.begin(&tx)?;
        let mut deltas: Vec<(i64, SessionDelta)> = Vec::new();
        let mut assignments = Vec::with_capacity(records.len());
        // Records are finished on their own tasks: within a batch, restore the order requests arrived in (ids
        // are given on arrival), so a conversation's turns are seen in order.
        let mut ordered: Vec<&Arc<RequestRecord>> = records.iter().collect();
        ordered.sort_by_key(|r| r.id);
        {
            let mut insert = tx.prepare_cached(&insert_request_sql())?;
            for record in ordered {
                let session = resolver.resolve(&tx, record)?;
                assignments.push((record.id, session));
                let context = record.context.as_deref();
                let preview = record
                    .preview
                    .as_deref()
                    .and_then(|p| truncate_chars(p, resolver.preview_chars()));
                insert.execute(params![
                    clamp(record.id),
                    session,
                    record.started_at_ms,
                    record.model,
                    record.provider,
                    record.upstream_model,
                    record.streaming,
                    record.status,
                    record.error_kind,
                    clamp(record.prompt_estimated),
                    clamp(record.prompt_calibrated),
                    record.calibration_ratio,
                    record.prompt_reported.map(clamp),
                    clamp(record.completion_estimated),
                    record.completion_reported.map(clamp),
                    record.cached_reported.map(clamp),
                    clamp(record.reasoning_estimated),
                    record.reasoning_reported.map(clamp),
                    clamp(record.prompt_tokens),
                    clamp(record.completion_tokens),
                    record.tokens_estimated,
                    record.prompt_accuracy,
                    record.completion_accuracy,
                    record.tokenizer,
                    record.tokenizer_exact,
                    record.cost_usd,
                    record.cost_estimated,
                    clamp(record.counting_us),
                    clamp(record.latency_us),
                    record.ttft_us.map(clamp),
                    record.upstream_headers_us.map(clamp),
                    record.attempts,
                    record.tool_call_fixes,
                    record.usage_injected,
                    record.finish_reason,
                    clamp(record.response_bytes),
                    preview,
                    record.client_session,
                    record.message_hashes.len() as i64,
                    record.upstream_us.map(clamp),
                    record.overhead_us.map(clamp),
                    record.cache_hit,
                    record.virtual_key,
                    context.map(|c| c.transforms.as_str()),
                    context.map(|c| clamp(c.tokens_before)),
                    context.and_then(|c| c.after_masking).map(clamp),
                    context.and_then(|c| c.after_observation).map(clamp),
                    context.and_then(|c| c.after_compaction).map(clamp),
                    context.map(|c| clamp(c.tokens_after)),
                    context.map_or(0, |c| c.masked_messages),
                    context.map_or(0, |c| c.observed_messages),
                    context.map_or(0, |c| c.compacted_messages),
                    context.and_then(|c| c.compaction.as_deref()),
                    context.and_then(|c| c.error.as_deref()),
                    clamp(record.tokens_saved),
                    record.cost_saved_usd,
                    record.client_app,
                    record.client_api,
                    record.dropped_tools,
                ])?;
                if let Some(id) = session {
                    let window = resolver.context_window(&record.model);
                    match deltas.iter_mut().find(|(s, _)| *s == id) {
                        Some((_, delta)) => delta.add(record, window),
                        None => {
                            let mut delta = SessionDelta::default();
                            delta.add(record, window);
                            deltas.push((id, delta));
                        }
                    }
                }
            }
        }
        for (id, delta) in &deltas {
            apply_delta(&tx, *id, delta)?;
        }
        tx.commit()?;
        let updates: Vec<ContextUpdate> = deltas
            .iter()
            .filter_map(|(id, delta)| {
                delta.context_window.map(|window| ContextUpdate {
                    session_id: *id,
                    tokens: delta.context_tokens.max(0) as u64,
                    window,
                })
            })
            .collect();
        resolver.notify_context(&updates);
        Ok(BatchReport {
            assignments,
            sessions: deltas.iter().map(|(id, _)| *id).collect(),
            created: resolver.created().to_vec(),
        })
    }

    /// Creates a manual session; `activate` makes it the active one.
    pub fn create_session(
        &mut self,
        resolver: &mut SessionResolver,
        name: &str,
        model: Option<&str>,
        activate: bool,
    ) -> Result<i64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        resolver.begin(&tx)?;
        let id = resolver.create(
            &tx,
            &NewSession {
                name: Some(name),
                model,
                source: "manual",
                client_key: None,
                created_at: unix_ms(),
                context_window: model.and_then(|m| resolver.context_window(m)),
                active: activate,
                client_app: None,
            },
        );
        match id.and_then(|id| tx.commit().map(|()| id)) {
            Ok(id) => Ok(id),
            Err(error) => {
                resolver.rollback();
                Err(error.into())
            }
        }
    }

    pub fn rename_session(&mut self, id: i64, name: &str) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE sessions SET name = ?2 WHERE id = ?1",
            params![id, name],
        )?;
        if changed == 0 {
            return Err(StoreError::UnknownSession(id));
        }
        Ok(())
    }

    /// Makes `id` the active session (or, with `active = false`, no longer active).
    pub fn set_active(&mut self, id: i64, active: bool) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row("SELECT 1 FROM sessions WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some();
        if !exists {
            return Err(StoreError::UnknownSession(id));
        }
        if active {
            tx.execute(
                "UPDATE sessions SET active = 0 WHERE active = 1 AND id <> ?1",
                [id],
            )?;
            tx.execute("UPDATE sessions SET active = 1 WHERE id = ?1", [id])?;
        } else {
            tx.execute("UPDATE sessions SET active = 0 WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes sessions and their requests; returns how many sessions existed.
    pub fn delete_sessions(
        &mut self,
        resolver: Option<&mut SessionResolver>,
        ids: &[i64],
    ) -> Result<usize, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deleted = 0;
        {
            let mut delete = tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?;
            for id in ids {
                deleted += delete.execute([id])?;
            }
        }
        tx.commit()?;
        if let Some(resolver) = resolver {
            for id in ids {
                resolver.forget(*id);
            }
            resolver.notify_deleted(ids);
        }
        Ok(deleted)
    }

    /// Deletes requests that started more than `days` days ago and sessions idle since then (with their
    /// requests); `vacuum` then gives the space back to the file system. Session aggregates are lifetime totals:
    /// they keep counting deleted requests.
    pub fn apply_retention(
        &mut self,
        resolver: Option<&mut SessionResolver>,
        days: u32,
        vacuum: bool,
    ) -> Result<RetentionOutcome, StoreError> {
        let cutoff = unix_ms() - i64::from(days) * 86_400_000;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stale: Vec<i64> = {
            let mut stmt = tx.prepare(
                "SELECT id FROM sessions WHERE last_activity < ?1 AND active = 0 ORDER BY id",
            )?;
            stmt.query_map([cutoff], |row| row.get(0))?
                .collect::<Result<_, _>>()?
        };
        let sessions_deleted = tx.execute(
            "DELETE FROM sessions WHERE last_activity < ?1 AND active = 0",
            [cutoff],
        )?;
        let requests_deleted =
            tx.execute("DELETE FROM requests WHERE started_at < ?1", [cutoff])?;
        tx.execute(
            "DELETE FROM alerts WHERE fired_at < ?1 AND resolved_at IS NOT NULL",
            [cutoff],
        )?;
        tx.execute("DELETE FROM masked_content WHERE created_at < ?1", [cutoff])?;
        tx.commit()?;
        if let Some(resolver) = resolver {
            for id in &stale {
                resolver.forget(*id);
            }
            resolver.notify_deleted(&stale);
        }
        if vacuum {
            self.conn.execute_batch("VACUUM")?;
        }
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(RetentionOutcome {
            cutoff_ms: cutoff,
            sessions_deleted,
            requests_deleted,
            vacuumed: vacuum,
        })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RetentionOutcome {
    pub cutoff_ms: i64,
    pub sessions_deleted: usize,
    pub requests_deleted: usize,
    pub vacuumed: bool,
}

/// What a committed batch did: where each request went, which sessions changed or were created.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    /// Record id → session id (`None`: a request without messages and without a session).
    pub assignments: Vec<(u64, Option<i64>)>,
    /// Sessions whose aggregates changed.
    pub sessions: Vec<i64>,
    /// Sessions the batch created (a subset of `sessions`).
    pub created: Vec<i64>,
}

/// What one batch adds to one session.
#[derive(Default)]
struct SessionDelta {
    requests: i64,
    errors: i64,
    prompt: i64,
    completion: i64,
    cached: i64,
    cost: f64,
    tokens_saved: i64,
    cost_saved: f64,
    last_activity: i64,
    context_tokens: i64,
    context_window: Option<u64>,
    model: String,
}

impl SessionDelta {
    fn add(&mut self, record: &RequestRecord, window: Option<u64>) {
        self.requests += 1;
        if is_error(record) {
            self.errors += 1;
        }
        self.prompt = self.prompt.saturating_add(clamp(record.prompt_tokens));
        self.completion = self
            .completion
            .saturating_add(clamp(record.completion_tokens));
        self.cached = self
            .cached
            .saturating_add(clamp(record.cached_reported.unwrap_or(0)));
        self.cost += record.cost_usd;
        self.tokens_saved = self.tokens_saved.saturating_add(clamp(record.tokens_saved));
        self.cost_saved += record.cost_saved_usd;
        let ended = record
            .started_at_ms
            .saturating_add(clamp(record.latency_us / 1000));
        self.last_activity = self.last_activity.max(ended);
        // The latest request's size is what the context gauge shows.
        self.context_tokens = clamp(
            record
                .prompt_tokens
                .saturating_add(record.completion_tokens),
        );
        if window.is_some() {
            self.context_window = window;
        }
        record.model.clone_into(&mut self.model);
    }
}

/// A request that did not end well: cut off (status 0), an error status, or an error kind.
pub fn is_error(record: &RequestRecord) -> bool {
    record.status == 0 || record.status >= 400 || record.error_kind.is_some()
}

fn apply_delta(conn: &Connection, id: i64, delta: &SessionDelta) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE sessions SET
            request_count = request_count + ?2,
            error_count = error_count + ?3,
            prompt_tokens = prompt_tokens + ?4,
            completion_tokens = completion_tokens + ?5,
            cached_tokens = cached_tokens + ?6,
            cost_usd = cost_usd + ?7,
            last_activity = max(last_activity, ?8),
            context_tokens = ?9,
            context_window = coalesce(?10, context_window),
            model = CASE WHEN source = 'manual' AND model IS NOT NULL THEN model ELSE ?11 END,
            tokens_saved = tokens_saved + ?12,
            cost_saved_usd = cost_saved_usd + ?13
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        delta.requests,
        delta.errors,
        delta.prompt,
        delta.completion,
        delta.cached,
        delta.cost,
        delta.last_activity,
        delta.context_tokens,
        delta.context_window.map(clamp),
        delta.model,
        delta.tokens_saved,
        delta.cost_saved,
    ])?;
    Ok(())
}

fn insert_request_sql() -> String {
    let columns = schema::REQUEST_COLUMNS.join(", ");
    let placeholders: Vec<String> = (1..=schema::REQUEST_COLUMNS.len())
        .map(|i| format!("?{i}"))
        .collect();
    format!(
        "INSERT INTO requests ({columns}) VALUES ({})",
        placeholders.join(", ")
    )
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// The schema version of an open database (0: empty).
pub fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    let has_table = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_table {
        return Ok(0);
    }
    Ok(conn
        .query_row("SELECT max(version) FROM schema_version", [], |row| {
            row.get::<_, Option<i64>>(0)
        })?
        .unwrap_or(0))
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = schema_version(&tx)?;
    if found > LATEST_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: LATEST_VERSION,
        });
    }
    if found == LATEST_VERSION {
        return Ok(());
    }
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    for (version, migration) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(migration).map_err(|e| {
            StoreError::Other(format!(
                "upgrading {} from schema version {version} to {}: {e}",
                path.display(),
                version + 1
            ))
        })?;
    }
    tx.execute("DELETE FROM schema_version", [])?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [LATEST_VERSION],
    )?;
    tx.commit()?;
    if found > 0 {
        tracing::info!(path = %path.display(), from = found, to = LATEST_VERSION, "database schema upgraded");
    }
    Ok(())
}

/// A read-only connection to an existing, up-to-date database.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing(path.to_path_buf()));
    }
    let open_error = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    let found = schema_version(&conn)?;
    if found > LATEST_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: LATEST_VERSION,
        });
    }
    if found < LATEST_VERSION {
        return Err(StoreError::Outdated {
            path: path.to_path_buf(),
            found,
            supported: LATEST_VERSION,
        });
    }
    Ok(conn)
}

/// A small pool of read-only connections, each used by one blocking task at a time.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Idle read connections kept.
const IDLE_READERS: usize = 4;

impl Readers {
    pub fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with a read connection (blocking: call from `spawn_blocking`). A connection that saw an error
    /// is not reused.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_read_only(&self.path)?,
        };
        let result = f(&conn);
        if result.is_ok() {
            let mut idle = self.idle.lock();
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
        }
        result
    }
}

pub use crate::util::unix_ms;

#[cfg(unix)]
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(_path: &Path) -> Option<(u64, u64)> {
    None
}
