//! Read-side queries (API, command line). Every query is served by an index; none scans `requests` except
//! counts in the store statistics and the exports, which page through it.

//!
//! The queries here are shared by both backends ([`super::db`]): they take any [`Db`].

use rusqlite::{Connection, params_from_iter};
use serde::Serialize;
use serde_json::{Map, Value};

use super::StoreError;
use super::db::{Db, Dialect, Owned, RowExt, Rows, Value as P};
use super::schema::BOOLEAN_COLUMNS;

/// A session with its aggregates.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: i64,
    pub name: Option<String>,
    pub model: Option<String>,
    /// `manual` (API), `client` (client-given id), `conversation` (recognised), `active` (session_mode).
    pub source: String,
    pub client_key: Option<String>,
    pub created_at_ms: i64,
    pub last_activity_ms: i64,
    pub active: bool,
    pub request_count: i64,
    pub error_count: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub total_tokens: i64,
    pub cost_usd: f64,
    /// The latest request's prompt + completion: what the context gauge shows.
    pub context_tokens: i64,
    pub context_window: Option<i64>,
    /// `context_tokens / context_window`.
    pub context_used: Option<f64>,
    /// Prompt tokens the context transforms removed from this session's requests, and their price.
    pub tokens_saved: i64,
    pub cost_saved_usd: f64,
    /// The session's context settings (`PUT /api/sessions/{id}/context`), if any.
    pub context_settings: Option<crate::config::context::Toggles>,
    /// The application of the request that opened the session (`Claude Code 2.1.197`…).
    pub client_app: Option<String>,
}

const SESSION_COLUMNS: &str = "id, name, model, source, client_key, created_at, last_activity, active, request_count, error_count, prompt_tokens, completion_tokens, cached_tokens, cost_usd, context_tokens, context_window, tokens_saved, cost_saved_usd, context_settings, client_app";

fn session_from_row(row: &[Owned]) -> Result<Session, StoreError> {
    let prompt_tokens = row.int(10)?;
    let completion_tokens = row.int(11)?;
    let context_tokens = row.int(14)?;
    let context_window = row.opt_int(15)?;
    let settings = row.opt_text(18)?;
    Ok(Session {
        id: row.int(0)?,
        name: row.opt_text(1)?,
        model: row.opt_text(2)?,
        source: row.text(3)?,
        client_key: row.opt_text(4)?,
        created_at_ms: row.int(5)?,
        last_activity_ms: row.int(6)?,
        active: row.int(7)? != 0,
        request_count: row.int(8)?,
        error_count: row.int(9)?,
        prompt_tokens,
        completion_tokens,
        cached_tokens: row.int(12)?,
        total_tokens: prompt_tokens.saturating_add(completion_tokens),
        cost_usd: row.real(13)?,
        context_tokens,
        context_window,
        context_used: context_window
            .filter(|w| *w > 0)
            .map(|w| context_tokens as f64 / w as f64),
        tokens_saved: row.int(16)?,
        cost_saved_usd: row.real(17)?,
        context_settings: settings.and_then(|s| serde_json::from_str(&s).ok()),
        client_app: row.opt_text(19)?,
    })
}

fn sessions_of(rows: Rows) -> Result<Vec<Session>, StoreError> {
    rows.rows.iter().map(|r| session_from_row(r)).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionSort {
    LastActivity,
    CreatedAt,
    Cost,
    Requests,
}

impl SessionSort {
    fn column(self) -> &'static str {
        match self {
            SessionSort::LastActivity => "last_activity",
            SessionSort::CreatedAt => "created_at",
            SessionSort::Cost => "cost_usd",
            SessionSort::Requests => "request_count",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Asc,
    Desc,
}

/// The query of a page of sessions (`?1` limit, `?2` offset).
pub fn list_sessions_sql(sort: SessionSort, order: Order) -> String {
    let direction = match order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    format!(
        "SELECT {SESSION_COLUMNS} FROM sessions ORDER BY {col} {direction}, id {direction} LIMIT ?1 OFFSET ?2",
        col = sort.column()
    )
}

/// A page of sessions.
pub fn list_sessions(
    db: &dyn Db,
    sort: SessionSort,
    order: Order,
    limit: u32,
    offset: u64,
) -> Result<Vec<Session>, StoreError> {
    sessions_of(db.query(
        &list_sessions_sql(sort, order),
        &[
            i64::from(limit).into(),
            i64::try_from(offset).unwrap_or(i64::MAX).into(),
        ],
    )?)
}

pub fn count_sessions(db: &dyn Db) -> Result<i64, StoreError> {
    one_int(db, "SELECT count(*) FROM sessions", &[]).map(|n| n.unwrap_or(0))
}

/// The first column of the first row, as an integer.
fn one_int(db: &dyn Db, sql: &str, params: &[P<'_>]) -> Result<Option<i64>, StoreError> {
    match db.first(sql, params)? {
        Some(row) => row.opt_int(0),
        None => Ok(None),
    }
}

pub fn get_session(db: &dyn Db, id: i64) -> Result<Option<Session>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
    Ok(sessions_of(db.query(&sql, &[id.into()])?)?
        .into_iter()
        .next())
}

pub fn active_session(db: &dyn Db) -> Result<Option<Session>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE active = 1 LIMIT 1");
    Ok(sessions_of(db.query(&sql, &[])?)?.into_iter().next())
}

/// Which requests to read.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub session: Option<i64>,
    /// `started_at >= since` (Unix ms).
    pub since: Option<i64>,
    /// `started_at < until` (Unix ms).
    pub until: Option<i64>,
    pub status: Option<StatusFilter>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Code(u16),
    /// Status 0 or >= 400, or an error kind.
    Error,
    /// 2xx without an error kind.
    Ok,
}

impl StatusFilter {
    pub fn parse(text: &str) -> Option<StatusFilter> {
        match text {
            "error" => Some(StatusFilter::Error),
            "ok" => Some(StatusFilter::Ok),
            code => code.parse().ok().map(StatusFilter::Code),
        }
    }
}

impl RequestFilter {
    /// A page of requests, newest first: the query and its parameters, limit and offset to be appended.
    pub fn list_sql(&self) -> (String, Vec<rusqlite::types::Value>) {
        let (sql, values) = self.list_query();
        let values = values
            .iter()
            .map(|v| match *v {
                P::Null => rusqlite::types::Value::Null,
                P::Int(n) => rusqlite::types::Value::Integer(n),
                P::Real(f) => rusqlite::types::Value::Real(f),
                P::Text(t) => rusqlite::types::Value::Text(t.to_string()),
                P::Blob(b) => rusqlite::types::Value::Blob(b.to_vec()),
                // The filter's parameters are scalars.
                P::Ints(_) | P::OptInts(_) | P::Reals(_) | P::Texts(_) => {
                    rusqlite::types::Value::Null
                }
            })
            .collect();
        (sql, values)
    }

    /// [`RequestFilter::list_sql`] with borrowed parameters.
    fn list_query(&self) -> (String, Vec<P<'_>>) {
        let (clause, values) = self.clause();
        let sql = format!(
            "SELECT * FROM requests WHERE {clause} ORDER BY started_at DESC, id DESC LIMIT ?{} OFFSET ?{}",
            values.len() + 1,
            values.len() + 2
        );
        (sql, values)
    }

    /// The WHERE clause (without `WHERE`) and its parameters.
    fn clause(&self) -> (String, Vec<P<'_>>) {
        let mut parts = Vec::new();
        let mut values = Vec::new();
        if let Some(session) = self.session {
            values.push(P::Int(session));
            parts.push(format!("session_id = ?{}", values.len()));
        }
        if let Some(since) = self.since {
            values.push(P::Int(since));
            parts.push(format!("started_at >= ?{}", values.len()));
        }
        if let Some(until) = self.until {
            values.push(P::Int(until));
            parts.push(format!("started_at < ?{}", values.len()));
        }
        match self.status {
            Some(StatusFilter::Code(code)) => {
                values.push(P::Int(i64::from(code)));
                parts.push(format!("status = ?{}", values.len()));
            }
            Some(StatusFilter::Error) => {
                parts.push("(status = 0 OR status >= 400 OR error_kind IS NOT NULL)".to_string())
            }
            Some(StatusFilter::Ok) => {
                parts.push("(status >= 200 AND status < 300 AND error_kind IS NULL)".to_string())
            }
            None => {}
        }
        if let Some(model) = &self.model {
            values.push(P::Text(model));
            parts.push(format!("model = ?{}", values.len()));
        }
        if parts.is_empty() {
            parts.push("1 = 1".to_string());
        }
        (parts.join(" AND "), values)
    }
}

/// A page of requests, newest first, as JSON objects (every stored column).
pub fn list_requests(
    db: &dyn Db,
    filter: &RequestFilter,
    limit: u32,
    offset: u64,
) -> Result<Vec<Map<String, Value>>, StoreError> {
    let (sql, mut values) = filter.list_query();
    values.push(P::Int(i64::from(limit)));
    values.push(P::Int(i64::try_from(offset).unwrap_or(i64::MAX)));
    Ok(rows_to_json(db.query(&sql, &values)?))
}

/// Requests with a row id above `after`, oldest first (`requests tail --follow`).
pub fn requests_after(
    db: &dyn Db,
    after: i64,
    limit: u32,
) -> Result<Vec<Map<String, Value>>, StoreError> {
    Ok(rows_to_json(db.query(
        "SELECT * FROM requests WHERE id > ?1 ORDER BY id LIMIT ?2",
        &[after.into(), i64::from(limit).into()],
    )?))
}

/// The newest `n` requests, oldest first.
pub fn last_requests(db: &dyn Db, n: u32) -> Result<Vec<Map<String, Value>>, StoreError> {
    let max = one_int(db, "SELECT max(id) FROM requests", &[])?;
    let after = max.unwrap_or(0) - i64::from(n);
    requests_after(db, after, n)
}

/// Rows as JSON objects; integer flags become booleans.
fn rows_to_json(rows: Rows) -> Vec<Map<String, Value>> {
    let Rows { names, rows } = rows;
    rows.into_iter()
        .map(|row| {
            let mut map = Map::with_capacity(names.len());
            for (name, value) in names.iter().zip(row) {
                let value = match value {
                    Owned::Null | Owned::Blob(_) => Value::Null,
                    Owned::Int(n) if BOOLEAN_COLUMNS.contains(&name.as_str()) => {
                        Value::Bool(n != 0)
                    }
                    Owned::Int(n) => Value::from(n),
                    Owned::Real(f) => Value::from(f),
                    Owned::Text(t) => Value::String(t),
                };
                map.insert(name.clone(), value);
            }
            map
        })
        .collect()
}

/// Counts and sizes for `/api/stats/store`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreCounts {
    pub sessions: i64,
    pub requests: i64,
    pub alerts: i64,
    pub unresolved_alerts: i64,
    pub active_session: Option<i64>,
    pub oldest_request_ms: Option<i64>,
    pub newest_request_ms: Option<i64>,
    pub schema_version: i64,
    pub db_bytes: u64,
    pub wal_bytes: u64,
}

/// Counts and sizes; `path` is the SQLite file (its size and its WAL's), `None` on PostgreSQL (the database's
/// size).
pub fn store_counts(
    db: &dyn Db,
    path: Option<&std::path::Path>,
) -> Result<StoreCounts, StoreError> {
    let one = |sql: &str| one_int(db, sql, &[]);
    let file_len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let (db_bytes, wal_bytes) = match (db.dialect(), path) {
        (Dialect::Sqlite, Some(path)) => {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            (file_len(path), file_len(std::path::Path::new(&wal)))
        }
        (Dialect::Postgres, _) => (
            one("SELECT pg_database_size(current_database())")?
                .unwrap_or(0)
                .max(0) as u64,
            0,
        ),
        (Dialect::Sqlite, None) => (0, 0),
    };
    Ok(StoreCounts {
        sessions: one("SELECT count(*) FROM sessions")?.unwrap_or(0),
        requests: one("SELECT count(*) FROM requests")?.unwrap_or(0),
        alerts: one("SELECT count(*) FROM alerts")?.unwrap_or(0),
        unresolved_alerts: one("SELECT count(*) FROM alerts WHERE resolved_at IS NULL")?
            .unwrap_or(0),
        active_session: one("SELECT id FROM sessions WHERE active = 1 LIMIT 1")?,
        oldest_request_ms: one("SELECT min(started_at) FROM requests")?,
        newest_request_ms: one("SELECT max(started_at) FROM requests")?,
        schema_version: one("SELECT max(version) FROM schema_version")?.unwrap_or(0),
        db_bytes,
        wal_bytes,
    })
}

/// The query plan SQLite chooses (one line per step), for tests and diagnostics.
pub fn explain(conn: &Connection, sql: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let nulls = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
    let rows = stmt.query_map(params_from_iter(nulls), |row| row.get::<_, String>(3))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Requests since a time and what they used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub cost_usd: f64,
}

/// The requests that started at or after `since_ms`, summed.
pub fn totals_since(db: &dyn Db, since_ms: i64) -> Result<Totals, StoreError> {
    let row = db
        .first(
            "SELECT count(*), CAST(coalesce(sum(prompt_tokens), 0) AS BIGINT),
                    CAST(coalesce(sum(completion_tokens), 0) AS BIGINT),
                    CAST(coalesce(sum(cached_reported), 0) AS BIGINT), coalesce(sum(cost_usd), 0.0)
             FROM requests WHERE started_at >= ?1",
            &[since_ms.into()],
        )?
        .unwrap_or_default();
    Ok(Totals {
        requests: row.int(0)?,
        prompt_tokens: row.int(1)?,
        completion_tokens: row.int(2)?,
        cached_tokens: row.int(3)?,
        cost_usd: row.real(4)?,
    })
}

/// Prompt tokens the context transforms saved over every stored session, and their price.
pub fn saved_totals(db: &dyn Db) -> Result<(u64, f64), StoreError> {
    let row = db
        .first(
            "SELECT CAST(coalesce(sum(tokens_saved), 0) AS BIGINT), coalesce(sum(cost_saved_usd), 0.0) FROM sessions",
            &[],
        )?
        .unwrap_or_default();
    Ok((row.int(0)?.max(0) as u64, row.real(1)?))
}

/// The record id of a session's latest request, if it has any.
pub fn latest_record_id(db: &dyn Db, session_id: i64) -> Result<Option<i64>, StoreError> {
    one_int(
        db,
        "SELECT record_id FROM requests WHERE session_id = ?1 ORDER BY started_at DESC, id DESC LIMIT 1",
        &[session_id.into()],
    )
}
