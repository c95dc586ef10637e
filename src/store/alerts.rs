//! The alerts table and its row, [`Alert`] (the same shape in the API, events and webhooks). The alert engine
//! decides; this only writes what it decided (on the writer thread, through
//! [`super::StoreSink::try_execute`]) and reads the history back for `/api/alerts`.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::{Store, StoreError};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A session's context window filling up (value: share used).
    Context,
    /// p95 end-to-end latency (value: milliseconds).
    Latency,
    /// Share of requests ending in an error (value: share).
    ErrorRate,
    /// 429 answers from a provider (value: count in the window; subject: the provider).
    #[serde(rename = "upstream_429")]
    Upstream429,
    /// Resident memory (value: bytes).
    Memory,
    /// Records waiting for the store writer (value: records).
    StoreBacklog,
    /// Records the store lost (value: records in the window).
    StoreDropped,
    /// Redis calls of the cluster's shared budgets and cache that failed (value: count in the window): the
    /// instance decides alone meanwhile (`on_redis_error`).
    RedisUnavailable,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Context => "context",
            AlertKind::Latency => "latency",
            AlertKind::ErrorRate => "error_rate",
            AlertKind::Upstream429 => "upstream_429",
            AlertKind::Memory => "memory",
            AlertKind::StoreBacklog => "store_backlog",
            AlertKind::StoreDropped => "store_dropped",
            AlertKind::RedisUnavailable => "redis_unavailable",
        }
    }

    pub fn parse(text: &str) -> Option<AlertKind> {
        [
            AlertKind::Context,
            AlertKind::Latency,
            AlertKind::ErrorRate,
            AlertKind::Upstream429,
            AlertKind::Memory,
            AlertKind::StoreBacklog,
            AlertKind::StoreDropped,
            AlertKind::RedisUnavailable,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        match text {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" | "error" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// One alert, active or resolved. The same shape in the API, the database, events and webhooks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub id: i64,
    pub kind: AlertKind,
    pub severity: Severity,
    pub session_id: Option<i64>,
    /// What else it is about (the provider of an `upstream_429` alert).
    pub subject: Option<String>,
    pub message: String,
    /// The measured value when it fired, and the rule's threshold (units per kind).
    pub value: f64,
    pub threshold: f64,
    pub fired_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
    /// `cleared`, `session_deleted` or `restart` once resolved.
    pub resolution: Option<String>,
    pub acked_at_ms: Option<i64>,
}

const COLUMNS: &str = "id, fired_at, resolved_at, kind, severity, session_id, subject, message, value, \
                       threshold, resolution, acked_at";

/// What the engine takes over from a previous run.
pub struct Restored {
    /// The highest alert id in the table (0 when empty): new ids continue after it.
    pub max_id: i64,
    /// Context alerts still unresolved: the sessions are still that full, so they stay active.
    pub context: Vec<Alert>,
    /// Other unresolved alerts, closed as `restart` (their conditions are measured afresh).
    pub closed: usize,
}

impl Store {
    /// Records a fired alert under the engine's id. A session deleted meanwhile is stored as none.
    pub fn insert_alert(&mut self, alert: &Alert) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO alerts (id, fired_at, resolved_at, kind, severity, session_id, subject,
                     message, value, threshold, resolution, acked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, (SELECT id FROM sessions WHERE id = ?6), ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                alert.id,
                alert.fired_at_ms,
                alert.resolved_at_ms,
                alert.kind.as_str(),
                alert.severity.as_str(),
                alert.session_id,
                alert.subject,
                alert.message,
                alert.value,
                alert.threshold,
                alert.resolution,
                alert.acked_at_ms,
            ])?;
        Ok(())
    }

    pub fn resolve_alert(
        &mut self,
        id: i64,
        at_ms: i64,
        resolution: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE alerts SET resolved_at = ?2, resolution = ?3 WHERE id = ?1 AND resolved_at IS NULL",
            )?
            .execute(params![id, at_ms, resolution])?;
        Ok(())
    }

    /// Marks an alert seen; false when there is no such alert.
    pub fn ack_alert(&mut self, id: i64, at_ms: i64) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .prepare_cached("UPDATE alerts SET acked_at = coalesce(acked_at, ?2) WHERE id = ?1")?
            .execute(params![id, at_ms])?;
        Ok(changed > 0)
    }

    /// At start: where ids continue, which context alerts stay active, and the rest closed as `restart`.
    pub fn restore_alerts(&mut self, now_ms: i64) -> Result<Restored, StoreError> {
        let max_id: i64 =
            self.conn
                .query_row("SELECT coalesce(max(id), 0) FROM alerts", [], |r| r.get(0))?;
        let context = {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {COLUMNS} FROM alerts WHERE resolved_at IS NULL AND kind = 'context' \
                 AND session_id IS NOT NULL ORDER BY id"
            ))?;
            let rows = stmt.query_map([], read_alert)?;
            rows.filter_map(|r| r.transpose())
                .collect::<Result<Vec<_>, _>>()?
        };
        let closed = self.conn.execute(
            "UPDATE alerts SET resolved_at = ?1, resolution = 'restart'
             WHERE resolved_at IS NULL AND (kind <> 'context' OR session_id IS NULL)",
            [now_ms],
        )?;
        Ok(Restored {
            max_id,
            context,
            closed,
        })
    }
}

/// Alerts newest first: `Some(true)` unresolved only, `Some(false)` resolved only.
pub fn list_alerts(
    conn: &Connection,
    active: Option<bool>,
    limit: u32,
) -> Result<Vec<Alert>, StoreError> {
    let filter = match active {
        None => "",
        Some(true) => "WHERE resolved_at IS NULL",
        Some(false) => "WHERE resolved_at IS NOT NULL",
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM alerts {filter} ORDER BY fired_at DESC, id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], read_alert)?;
    Ok(rows
        .filter_map(|r| r.transpose())
        .collect::<Result<Vec<_>, _>>()?)
}

pub fn get_alert(conn: &Connection, id: i64) -> Result<Option<Alert>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM alerts WHERE id = ?1"),
            [id],
            read_alert,
        )
        .optional()?
        .flatten())
}

/// A row as an alert; `None` for a kind this version does not know.
fn read_alert(row: &Row<'_>) -> rusqlite::Result<Option<Alert>> {
    let kind: String = row.get(3)?;
    let severity: String = row.get(4)?;
    let Some(kind) = AlertKind::parse(&kind) else {
        return Ok(None);
    };
    Ok(Some(Alert {
        id: row.get(0)?,
        fired_at_ms: row.get(1)?,
        resolved_at_ms: row.get(2)?,
        kind,
        severity: Severity::parse(&severity).unwrap_or(Severity::Warning),
        session_id: row.get(5)?,
        subject: row.get(6)?,
        message: row.get(7)?,
        value: row.get::<_, Option<f64>>(8)?.unwrap_or(0.0),
        threshold: row.get::<_, Option<f64>>(9)?.unwrap_or(0.0),
        resolution: row.get(10)?,
        acked_at_ms: row.get(11)?,
    }))
}
