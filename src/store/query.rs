//! Read-side queries (API, command line). Every query is served by an index; none scans `requests` except
//! counts in the store statistics and the exports, which page through it.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};
use serde::Serialize;
use serde_json::{Map, Value};

use super::StoreError;
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

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    let prompt_tokens: i64 = row.get(10)?;
    let completion_tokens: i64 = row.get(11)?;
    let context_tokens: i64 = row.get(14)?;
    let context_window: Option<i64> = row.get(15)?;
    let settings: Option<String> = row.get(18)?;
    Ok(Session {
        id: row.get(0)?,
        name: row.get(1)?,
        model: row.get(2)?,
        source: row.get(3)?,
        client_key: row.get(4)?,
        created_at_ms: row.get(5)?,
        last_activity_ms: row.get(6)?,
        active: row.get(7)?,
        request_count: row.get(8)?,
        error_count: row.get(9)?,
        prompt_tokens,
        completion_tokens,
        cached_tokens: row.get(12)?,
        total_tokens: prompt_tokens.saturating_add(completion_tokens),
        cost_usd: row.get(13)?,
        context_tokens,
        context_window,
        context_used: context_window
            .filter(|w| *w > 0)
            .map(|w| context_tokens as f64 / w as f64),
        tokens_saved: row.get(16)?,
        cost_saved_usd: row.get(17)?,
        context_settings: settings.and_then(|s| serde_json::from_str(&s).ok()),
        client_app: row.get(19)?,
    })
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
    conn: &Connection,
    sort: SessionSort,
    order: Order,
    limit: u32,
    offset: u64,
) -> Result<Vec<Session>, StoreError> {
    let mut stmt = conn.prepare_cached(&list_sessions_sql(sort, order))?;
    let rows = stmt.query_map(
        [i64::from(limit), i64::try_from(offset).unwrap_or(i64::MAX)],
        session_from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn count_sessions(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM sessions")?
        .query_row([], |row| row.get(0))?)
}

pub fn get_session(conn: &Connection, id: i64) -> Result<Option<Session>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], session_from_row)
        .optional()?)
}

pub fn active_session(conn: &Connection) -> Result<Option<Session>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE active = 1 LIMIT 1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([], session_from_row)
        .optional()?)
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
        let (clause, values) = self.clause();
        let sql = format!(
            "SELECT * FROM requests WHERE {clause} ORDER BY started_at DESC, id DESC LIMIT ?{} OFFSET ?{}",
            values.len() + 1,
            values.len() + 2
        );
        (sql, values)
    }

    /// The WHERE clause (without `WHERE`) and its parameters.
    fn clause(&self) -> (String, Vec<rusqlite::types::Value>) {
        use rusqlite::types::Value as V;
        let mut parts = Vec::new();
        let mut values = Vec::new();
        if let Some(session) = self.session {
            values.push(V::Integer(session));
            parts.push(format!("session_id = ?{}", values.len()));
        }
        if let Some(since) = self.since {
            values.push(V::Integer(since));
            parts.push(format!("started_at >= ?{}", values.len()));
        }
        if let Some(until) = self.until {
            values.push(V::Integer(until));
            parts.push(format!("started_at < ?{}", values.len()));
        }
        match self.status {
            Some(StatusFilter::Code(code)) => {
                values.push(V::Integer(i64::from(code)));
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
            values.push(V::Text(model.clone()));
            parts.push(format!("model = ?{}", values.len()));
        }
        if parts.is_empty() {
            parts.push("1".to_string());
        }
        (parts.join(" AND "), values)
    }
}

/// A page of requests, newest first, as JSON objects (every stored column).
pub fn list_requests(
    conn: &Connection,
    filter: &RequestFilter,
    limit: u32,
    offset: u64,
) -> Result<Vec<Map<String, Value>>, StoreError> {
    let (sql, mut values) = filter.list_sql();
    values.push(rusqlite::types::Value::Integer(i64::from(limit)));
    values.push(rusqlite::types::Value::Integer(
        i64::try_from(offset).unwrap_or(i64::MAX),
    ));
    let mut stmt = conn.prepare_cached(&sql)?;
    let names: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let mut rows = stmt.query(params_from_iter(values))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(row_to_json(row, &names)?);
    }
    Ok(out)
}

/// Requests with a row id above `after`, oldest first (`requests tail --follow`).
pub fn requests_after(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<Map<String, Value>>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT * FROM requests WHERE id > ?1 ORDER BY id LIMIT ?2")?;
    let names: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let mut rows = stmt.query([after, i64::from(limit)])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(row_to_json(row, &names)?);
    }
    Ok(out)
}

/// The newest `n` requests, oldest first.
pub fn last_requests(conn: &Connection, n: u32) -> Result<Vec<Map<String, Value>>, StoreError> {
    let max: Option<i64> = conn.query_row("SELECT max(id) FROM requests", [], |row| row.get(0))?;
    let after = max.unwrap_or(0) - i64::from(n);
    requests_after(conn, after, n)
}

/// One row as a JSON object; integer flags become booleans.
pub fn row_to_json(row: &Row<'_>, names: &[String]) -> rusqlite::Result<Map<String, Value>> {
    let mut map = Map::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let value = match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) if BOOLEAN_COLUMNS.contains(&name.as_str()) => Value::Bool(n != 0),
            ValueRef::Integer(n) => Value::from(n),
            ValueRef::Real(f) => Value::from(f),
            ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(_) => Value::Null,
        };
        map.insert(name.clone(), value);
    }
    Ok(map)
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

pub fn store_counts(conn: &Connection, path: &std::path::Path) -> Result<StoreCounts, StoreError> {
    let one =
        |sql: &str| -> rusqlite::Result<Option<i64>> { conn.query_row(sql, [], |r| r.get(0)) };
    let file_len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    Ok(StoreCounts {
        sessions: one("SELECT count(*) FROM sessions")?.unwrap_or(0),
        requests: one("SELECT count(*) FROM requests")?.unwrap_or(0),
        alerts: one("SELECT count(*) FROM alerts")?.unwrap_or(0),
        unresolved_alerts: one("SELECT count(*) FROM alerts WHERE resolved_at IS NULL")?
            .unwrap_or(0),
        active_session: one("SELECT id FROM sessions WHERE active = 1 LIMIT 1")
            .optional()?
            .flatten(),
        oldest_request_ms: one("SELECT min(started_at) FROM requests")?,
        newest_request_ms: one("SELECT max(started_at) FROM requests")?,
        schema_version: super::schema_version(conn)?,
        db_bytes: file_len(path),
        wal_bytes: file_len(std::path::Path::new(&wal)),
    })
}

/// The query plan SQLite chooses (one line per step), for tests and diagnostics.
pub fn explain(conn: &Connection, sql: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let nulls = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
    let rows = stmt.query_map(params_from_iter(nulls), |row| row.get::<_, String>(3))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
