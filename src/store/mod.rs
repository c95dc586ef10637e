//! The store: every finished request, grouped into sessions with aggregates kept up to date, and alerts — in an
//! SQLite file (the default) or PostgreSQL ([`pg`]), through one interface ([`db`]).
//!
//! One writer: [`StoreSink`] takes records on the request path (a `try_send` into a bounded queue) and one
//! dedicated thread commits them in batches, resolving sessions in order ([`sessions`]). Readers (the HTTP API,
//! the command line) use their own read-only connections; WAL lets them read while the writer writes.

pub mod alerts;
pub mod cli;
mod commands;
pub mod db;
pub use commands::SessionSettings;
pub mod export;
pub mod fleet;
pub mod ledgers;
pub mod masks;
pub mod migrate;
pub mod pg;
pub mod query;
pub mod responses;
pub mod schema;
pub mod sessions;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::accounting::RequestRecord;
use db::{Db, Dialect, RowExt, Value};
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
    #[error("PostgreSQL error: {}", pg::describe(.0))]
    Postgres(#[from] postgres::Error),
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        source: postgres::Error,
    },
    #[error("{0} is not available on the PostgreSQL store yet")]
    NotOnPostgres(&'static str),
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
        // SQLite: one cached single-row statement per record is as fast as multi-row inserts.
        let written = write_records(&*tx, records, resolver, 1)?;
        tx.commit()?;
        Ok(written.committed(resolver))
    }

    /// Runs `f` in one `IMMEDIATE` transaction, committed when it succeeds.
    pub(crate) fn transact<T>(
        &mut self,
        f: impl FnOnce(&dyn Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&*tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Creates a manual session; `activate` makes it the active one.
    pub fn create_session(
        &mut self,
        resolver: &mut SessionResolver,
        name: &str,
        model: Option<&str>,
        activate: bool,
    ) -> Result<i64, StoreError> {
        let result = self.transact(|db| create_session_in(db, resolver, name, model, activate));
        if result.is_err() {
            resolver.rollback();
        }
        result
    }

    pub fn rename_session(&mut self, id: i64, name: &str) -> Result<(), StoreError> {
        self.transact(|db| rename_session_in(db, id, name))
    }

    /// Makes `id` the active session (or, with `active = false`, no longer active).
    pub fn set_active(&mut self, id: i64, active: bool) -> Result<(), StoreError> {
        self.transact(|db| set_active_in(db, id, active))
    }

    /// Deletes sessions and their requests; returns how many sessions existed.
    pub fn delete_sessions(
        &mut self,
        resolver: Option<&mut SessionResolver>,
        ids: &[i64],
    ) -> Result<usize, StoreError> {
        let deleted = self.transact(|db| delete_sessions_in(db, ids))?;
        if let Some(resolver) = resolver {
            for id in ids {
                resolver.forget(*id);
            }
            resolver.notify_deleted(ids);
        }
        Ok(deleted)
    }
}

/// Rows of each table one retention transaction deletes at most: the deletion commits in steps, so neither
/// engine holds one long transaction over it (PostgreSQL: row locks other instances' writers would wait on;
/// SQLite: a WAL file the size of the whole deletion).
const RETENTION_BATCH: i64 = 5_000;

/// Deletes requests that started more than `days` days ago and sessions idle since then (with their requests),
/// on either backend, in steps of [`RETENTION_BATCH`] rows; the resolver forgets the sessions deleted. `vacuum`
/// then gives the space back to the file system (SQLite only: PostgreSQL's autovacuum makes the space reusable,
/// and `VACUUM FULL` would lock the tables other instances write). Session aggregates are lifetime totals: they
/// keep counting deleted requests.
pub(crate) fn apply_retention(
    state: &mut writer::WriterState,
    days: u32,
    vacuum: bool,
) -> Result<RetentionOutcome, StoreError> {
    let cutoff = unix_ms() - i64::from(days) * 86_400_000;
    let mut sessions_deleted = 0;
    let mut requests_deleted = 0;
    loop {
        let step = state.transact(|db, _| retention_step(db, cutoff))?;
        sessions_deleted += step.sessions.len();
        requests_deleted += step.requests as usize;
        if !step.sessions.is_empty() {
            for id in &step.sessions {
                state.resolver.forget(*id);
            }
            state.resolver.notify_deleted(&step.sessions);
        }
        if !step.more {
            break;
        }
    }
    let vacuumed = state.with_db(|db| match db.dialect() {
        Dialect::Sqlite => {
            if vacuum {
                db.execute("VACUUM", &[])?;
            }
            db.query("PRAGMA wal_checkpoint(TRUNCATE)", &[])?;
            Ok(vacuum)
        }
        Dialect::Postgres => Ok(false),
    })?;
    Ok(RetentionOutcome {
        cutoff_ms: cutoff,
        sessions_deleted,
        requests_deleted,
        vacuumed,
    })
}

/// What one retention transaction deleted.
struct RetentionStep {
    sessions: Vec<i64>,
    requests: u64,
    /// A table had more than one batch to delete.
    more: bool,
}

fn retention_step(db: &dyn Db, cutoff: i64) -> Result<RetentionStep, StoreError> {
    let batch = Value::Int(RETENTION_BATCH);
    let sessions = db
        .query(
            "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE last_activity < ?1 AND active = 0
                 ORDER BY id LIMIT ?2) RETURNING id",
            &[cutoff.into(), batch],
        )?
        .rows
        .iter()
        .map(|r| r.int(0))
        .collect::<Result<Vec<i64>, _>>()?;
    let requests = db.execute(
        "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE started_at < ?1
             ORDER BY started_at LIMIT ?2)",
        &[cutoff.into(), batch],
    )?;
    let alerts = db.execute(
        "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE fired_at < ?1 AND resolved_at IS NOT NULL
             LIMIT ?2)",
        &[cutoff.into(), batch],
    )?;
    let masked = db.execute(
        "DELETE FROM masked_content WHERE hash IN (SELECT hash FROM masked_content WHERE created_at < ?1
             LIMIT ?2)",
        &[cutoff.into(), batch],
    )?;
    let full = |n: u64| n >= RETENTION_BATCH as u64;
    Ok(RetentionStep {
        more: full(sessions.len() as u64) || full(requests) || full(alerts) || full(masked),
        sessions,
        requests,
    })
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

/// Creates a manual session (both backends, inside the caller's transaction).
pub(crate) fn create_session_in(
    db: &dyn Db,
    resolver: &mut SessionResolver,
    name: &str,
    model: Option<&str>,
    activate: bool,
) -> Result<i64, StoreError> {
    resolver.begin(db)?;
    let context_window = model.and_then(|m| resolver.context_window(m));
    resolver.create(
        db,
        &NewSession {
            name: Some(name),
            model,
            source: "manual",
            client_key: None,
            created_at: unix_ms(),
            context_window,
            active: activate,
            client_app: None,
        },
    )
}

pub(crate) fn rename_session_in(db: &dyn Db, id: i64, name: &str) -> Result<(), StoreError> {
    let changed = db.execute(
        "UPDATE sessions SET name = ?2 WHERE id = ?1",
        &[id.into(), name.into()],
    )?;
    if changed == 0 {
        return Err(StoreError::UnknownSession(id));
    }
    Ok(())
}

pub(crate) fn set_active_in(db: &dyn Db, id: i64, active: bool) -> Result<(), StoreError> {
    if db
        .first("SELECT 1 FROM sessions WHERE id = ?1", &[id.into()])?
        .is_none()
    {
        return Err(StoreError::UnknownSession(id));
    }
    if active {
        db.execute(
            "UPDATE sessions SET active = 0 WHERE active = 1 AND id <> ?1",
            &[id.into()],
        )?;
        db.execute("UPDATE sessions SET active = 1 WHERE id = ?1", &[id.into()])?;
    } else {
        db.execute("UPDATE sessions SET active = 0 WHERE id = ?1", &[id.into()])?;
    }
    Ok(())
}

pub(crate) fn delete_sessions_in(db: &dyn Db, ids: &[i64]) -> Result<usize, StoreError> {
    let mut deleted = 0;
    for id in ids {
        deleted += db.execute("DELETE FROM sessions WHERE id = ?1", &[(*id).into()])? as usize;
    }
    Ok(deleted)
}

/// A batch written, not yet committed: where each record went and what each session gains.
pub(crate) struct Written {
    assignments: Vec<(u64, Option<i64>)>,
    deltas: Vec<(i64, SessionDelta)>,
}

impl Written {
    /// After the commit: tells the resolver's listener each session's context; the report of the batch.
    pub(crate) fn committed(self, resolver: &SessionResolver) -> BatchReport {
        let updates: Vec<ContextUpdate> = self
            .deltas
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
        BatchReport {
            assignments: self.assignments,
            sessions: self.deltas.iter().map(|(id, _)| *id).collect(),
            created: resolver.created().to_vec(),
        }
    }
}

/// Writes `records` inside the caller's transaction, on either backend: each gets its session (resolved in
/// arrival order), rows go in by `chunk` per statement, then each session's aggregates are added to once —
/// `x = x + delta`, sessions in id order, so writers of one session on other instances neither lose updates nor
/// deadlock.
pub(crate) fn write_records(
    db: &dyn Db,
    records: &[Arc<RequestRecord>],
    resolver: &mut SessionResolver,
    chunk: usize,
) -> Result<Written, StoreError> {
    resolver.begin(db)?;
    let mut deltas: Vec<(i64, SessionDelta)> = Vec::new();
    let mut assignments = Vec::with_capacity(records.len());
    // Records are finished on their own tasks: within a batch, restore the order requests arrived in (ids
    // are given on arrival), so a conversation's turns are seen in order.
    let mut ordered: Vec<&Arc<RequestRecord>> = records.iter().collect();
    ordered.sort_by_key(|r| r.id);
    resolver.prefetch(db, &ordered)?;
    let mut sessions = Vec::with_capacity(ordered.len());
    for record in &ordered {
        let session = resolver.resolve(db, record)?;
        assignments.push((record.id, session));
        sessions.push(session);
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
    let previews: Vec<Option<String>> = ordered
        .iter()
        .map(|r| {
            r.preview
                .as_deref()
                .and_then(|p| truncate_chars(p, resolver.preview_chars()))
        })
        .collect();
    let mut values: Vec<Value<'_>> =
        Vec::with_capacity(ordered.len() * schema::REQUEST_COLUMNS.len());
    for ((record, session), preview) in ordered.iter().zip(&sessions).zip(&previews) {
        request_values(record, *session, preview.as_deref(), &mut values);
    }
    if !db.copy_rows("requests", schema::REQUEST_COLUMNS, &values)? {
        let chunk = chunk.max(1);
        let row = schema::REQUEST_COLUMNS.len();
        let mut full_sql: Option<String> = None;
        for rows in values.chunks(chunk * row) {
            let n = rows.len() / row;
            let sql = if n == chunk {
                full_sql.get_or_insert_with(|| insert_request_sql(chunk))
            } else {
                &insert_request_sql(n)
            };
            db.execute(sql, rows)?;
        }
    }
    // Aggregates are added (`x = x + delta`), never overwritten, and sessions are locked in id order, so
    // writers of several instances touching the same sessions neither lose updates nor deadlock.
    deltas.sort_by_key(|(id, _)| *id);
    match db.dialect() {
        Dialect::Postgres => apply_deltas_bulk(db, &deltas)?,
        Dialect::Sqlite => {
            for (id, delta) in &deltas {
                apply_delta(db, *id, delta)?;
            }
        }
    }
    Ok(Written {
        assignments,
        deltas,
    })
}

/// One record's `requests` row, in [`schema::REQUEST_COLUMNS`] order.
fn request_values<'a>(
    record: &'a RequestRecord,
    session: Option<i64>,
    preview: Option<&'a str>,
    out: &mut Vec<Value<'a>>,
) {
    let context = record.context.as_deref();
    out.extend_from_slice(&[
        clamp(record.id).into(),
        session.into(),
        record.started_at_ms.into(),
        record.model.as_str().into(),
        record.provider.as_str().into(),
        record.upstream_model.as_str().into(),
        record.streaming.into(),
        i64::from(record.status).into(),
        record.error_kind.as_deref().into(),
        clamp(record.prompt_estimated).into(),
        clamp(record.prompt_calibrated).into(),
        record.calibration_ratio.into(),
        record.prompt_reported.map(clamp).into(),
        clamp(record.completion_estimated).into(),
        record.completion_reported.map(clamp).into(),
        record.cached_reported.map(clamp).into(),
        clamp(record.reasoning_estimated).into(),
        record.reasoning_reported.map(clamp).into(),
        clamp(record.prompt_tokens).into(),
        clamp(record.completion_tokens).into(),
        record.tokens_estimated.into(),
        record.prompt_accuracy.into(),
        record.completion_accuracy.into(),
        record.tokenizer.as_str().into(),
        record.tokenizer_exact.into(),
        record.cost_usd.into(),
        record.cost_estimated.into(),
        clamp(record.counting_us).into(),
        clamp(record.latency_us).into(),
        record.ttft_us.map(clamp).into(),
        record.upstream_headers_us.map(clamp).into(),
        i64::from(record.attempts).into(),
        i64::from(record.tool_call_fixes).into(),
        record.usage_injected.into(),
        record.finish_reason.as_deref().into(),
        clamp(record.response_bytes).into(),
        preview.into(),
        record.client_session.as_deref().into(),
        (record.message_hashes.len() as i64).into(),
        record.upstream_us.map(clamp).into(),
        record.overhead_us.map(clamp).into(),
        record.cache_hit.into(),
        record.virtual_key.as_deref().into(),
        context.map(|c| c.transforms.as_str()).into(),
        context.map(|c| clamp(c.tokens_before)).into(),
        context.and_then(|c| c.after_masking).map(clamp).into(),
        context.and_then(|c| c.after_observation).map(clamp).into(),
        context.and_then(|c| c.after_compaction).map(clamp).into(),
        context.map(|c| clamp(c.tokens_after)).into(),
        context.map_or(0, |c| i64::from(c.masked_messages)).into(),
        context.map_or(0, |c| i64::from(c.observed_messages)).into(),
        context
            .map_or(0, |c| i64::from(c.compacted_messages))
            .into(),
        context.and_then(|c| c.compaction.as_deref()).into(),
        context.and_then(|c| c.error.as_deref()).into(),
        clamp(record.tokens_saved).into(),
        record.cost_saved_usd.into(),
        record.client_app.as_deref().into(),
        record.client_api.into(),
        i64::from(record.dropped_tools).into(),
        i64::from(record.dropped_fields).into(),
        record.cache_write_reported.map(clamp).into(),
        record.instance.as_deref().into(),
    ]);
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
    /// The latest request's conversation tip ([`sessions::conversation_tip`]).
    tip: Option<i64>,
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
        if let Some(tip) = sessions::conversation_tip(&record.message_hashes) {
            self.tip = Some(tip);
        }
    }
}

/// A request that did not end well: cut off (status 0), an error status, or an error kind.
pub fn is_error(record: &RequestRecord) -> bool {
    record.status == 0 || record.status >= 400 || record.error_kind.is_some()
}

fn apply_delta(db: &dyn Db, id: i64, delta: &SessionDelta) -> Result<(), StoreError> {
    db.execute(
        "UPDATE sessions SET
            request_count = request_count + ?2,
            error_count = error_count + ?3,
            prompt_tokens = prompt_tokens + ?4,
            completion_tokens = completion_tokens + ?5,
            cached_tokens = cached_tokens + ?6,
            cost_usd = cost_usd + ?7,
            last_activity = CASE WHEN last_activity > ?8 THEN last_activity ELSE ?8 END,
            context_tokens = ?9,
            context_window = coalesce(?10, context_window),
            model = CASE WHEN source = 'manual' AND model IS NOT NULL THEN model ELSE ?11 END,
            tokens_saved = tokens_saved + ?12,
            cost_saved_usd = cost_saved_usd + ?13,
            conversation_tip = coalesce(?14, conversation_tip)
         WHERE id = ?1",
        &[
            id.into(),
            delta.requests.into(),
            delta.errors.into(),
            delta.prompt.into(),
            delta.completion.into(),
            delta.cached.into(),
            delta.cost.into(),
            delta.last_activity.into(),
            delta.context_tokens.into(),
            delta.context_window.map(clamp).into(),
            delta.model.as_str().into(),
            delta.tokens_saved.into(),
            delta.cost_saved.into(),
            delta.tip.into(),
        ],
    )?;
    Ok(())
}

/// [`apply_delta`] for every session of a batch in two statements (PostgreSQL): the rows are locked in id order
/// (`ORDER BY id FOR UPDATE`: the lock step runs over the sorted rows), then updated from arrays with
/// `unnest(…)` — two round trips instead of one per session. `deltas` is sorted by id.
fn apply_deltas_bulk(db: &dyn Db, deltas: &[(i64, SessionDelta)]) -> Result<(), StoreError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = deltas.iter().map(|(id, _)| *id).collect();
    let column =
        |f: fn(&SessionDelta) -> i64| -> Vec<i64> { deltas.iter().map(|(_, d)| f(d)).collect() };
    let requests = column(|d| d.requests);
    let errors = column(|d| d.errors);
    let prompt = column(|d| d.prompt);
    let completion = column(|d| d.completion);
    let cached = column(|d| d.cached);
    let last_activity = column(|d| d.last_activity);
    let context_tokens = column(|d| d.context_tokens);
    let tokens_saved = column(|d| d.tokens_saved);
    let cost: Vec<f64> = deltas.iter().map(|(_, d)| d.cost).collect();
    let cost_saved: Vec<f64> = deltas.iter().map(|(_, d)| d.cost_saved).collect();
    let windows: Vec<Option<i64>> = deltas
        .iter()
        .map(|(_, d)| d.context_window.map(clamp))
        .collect();
    let models: Vec<&str> = deltas.iter().map(|(_, d)| d.model.as_str()).collect();
    let tips: Vec<Option<i64>> = deltas.iter().map(|(_, d)| d.tip).collect();
    db.query(
        "SELECT id FROM sessions WHERE id = ANY(?1::bigint[]) ORDER BY id FOR UPDATE",
        &[Value::Ints(&ids)],
    )?;
    db.execute(
        "UPDATE sessions AS s SET
            request_count = s.request_count + d.requests,
            error_count = s.error_count + d.errors,
            prompt_tokens = s.prompt_tokens + d.prompt,
            completion_tokens = s.completion_tokens + d.completion,
            cached_tokens = s.cached_tokens + d.cached,
            cost_usd = s.cost_usd + d.cost,
            last_activity = CASE WHEN s.last_activity > d.last_activity THEN s.last_activity ELSE d.last_activity END,
            context_tokens = d.context_tokens,
            context_window = coalesce(d.context_window, s.context_window),
            model = CASE WHEN s.source = 'manual' AND s.model IS NOT NULL THEN s.model ELSE d.model END,
            tokens_saved = s.tokens_saved + d.tokens_saved,
            cost_saved_usd = s.cost_saved_usd + d.cost_saved,
            conversation_tip = coalesce(d.tip, s.conversation_tip)
         FROM unnest(?1::bigint[], ?2::bigint[], ?3::bigint[], ?4::bigint[], ?5::bigint[], ?6::bigint[],
                     ?7::double precision[], ?8::bigint[], ?9::bigint[], ?10::bigint[], ?11::text[],
                     ?12::bigint[], ?13::double precision[], ?14::bigint[])
              AS d(id, requests, errors, prompt, completion, cached, cost, last_activity, context_tokens,
                   context_window, model, tokens_saved, cost_saved, tip)
         WHERE s.id = d.id",
        &[
            Value::Ints(&ids),
            Value::Ints(&requests),
            Value::Ints(&errors),
            Value::Ints(&prompt),
            Value::Ints(&completion),
            Value::Ints(&cached),
            Value::Reals(&cost),
            Value::Ints(&last_activity),
            Value::Ints(&context_tokens),
            Value::OptInts(&windows),
            Value::Texts(&models),
            Value::Ints(&tokens_saved),
            Value::Reals(&cost_saved),
            Value::OptInts(&tips),
        ],
    )?;
    Ok(())
}

/// `INSERT INTO requests` of `rows` rows.
fn insert_request_sql(rows: usize) -> String {
    let columns = schema::REQUEST_COLUMNS.join(", ");
    let n = schema::REQUEST_COLUMNS.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let placeholders: Vec<String> = (1..=n).map(|i| format!("?{}", r * n + i)).collect();
            format!("({})", placeholders.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO requests ({columns}) VALUES {}",
        tuples.join(", ")
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

/// Readers of either backend: a small pool of connections, each used by one blocking task at a time.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    pg: Option<pg::PgReaders>,
}

/// Idle read connections kept.
const IDLE_READERS: usize = 4;

impl Readers {
    /// Readers of an SQLite file.
    pub fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            pg: None,
        }
    }

    /// Readers of the store at `location`.
    pub fn at(location: &pg::Location) -> Readers {
        match location {
            pg::Location::Sqlite(path) => Readers::new(path),
            pg::Location::Postgres(url) => Readers {
                path: PathBuf::new(),
                idle: Mutex::new(Vec::new()),
                pg: Some(pg::PgReaders::new(url)),
            },
        }
    }

    /// The SQLite file (empty on PostgreSQL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// Runs `f` with an SQLite read connection (blocking: call from `spawn_blocking`); on PostgreSQL, for the
    /// reads not yet written against [`db::Db`], [`StoreError::NotOnPostgres`]. A connection that saw an error is
    /// not reused.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.pg.is_some() {
            return Err(StoreError::NotOnPostgres("this request"));
        }
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

    /// Runs `f` with a read connection of either backend (blocking: call from `spawn_blocking`).
    pub fn with_db<T>(
        &self,
        f: impl FnOnce(&dyn db::Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.pg {
            Some(pg) => pg.with(f),
            None => self.with(|conn| f(conn)),
        }
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
