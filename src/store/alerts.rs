//! The alerts table and its row, [`Alert`] (the same shape in the API, events and webhooks). The alert engine
//! decides; this only writes what it decided (on the writer thread, through
//! [`super::StoreSink::try_execute`]) and reads the history back for `/api/alerts`, on either backend.

use serde::Serialize;

use super::StoreError;
use super::db::{Db, Owned, RowExt, Rows};

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

/// Records a fired alert under the engine's id (again: replaces it). A session deleted meanwhile is stored as
/// none. `ON CONFLICT … DO UPDATE` is the upsert both engines take (SQLite ≥ 3.24).
pub(crate) fn insert_alert(db: &dyn Db, alert: &Alert) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO alerts (id, fired_at, resolved_at, kind, severity, session_id, subject, message, value,
             threshold, resolution, acked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, (SELECT id FROM sessions WHERE id = ?6), ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (id) DO UPDATE SET fired_at = excluded.fired_at, resolved_at = excluded.resolved_at,
             kind = excluded.kind, severity = excluded.severity, session_id = excluded.session_id,
             subject = excluded.subject, message = excluded.message, value = excluded.value,
             threshold = excluded.threshold, resolution = excluded.resolution, acked_at = excluded.acked_at",
        &[
            alert.id.into(),
            alert.fired_at_ms.into(),
            alert.resolved_at_ms.into(),
            alert.kind.as_str().into(),
            alert.severity.as_str().into(),
            alert.session_id.into(),
            alert.subject.as_deref().into(),
            alert.message.as_str().into(),
            alert.value.into(),
            alert.threshold.into(),
            alert.resolution.as_deref().into(),
            alert.acked_at_ms.into(),
        ],
    )?;
    Ok(())
}

pub(crate) fn resolve_alert(
    db: &dyn Db,
    id: i64,
    at_ms: i64,
    resolution: &str,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE alerts SET resolved_at = ?2, resolution = ?3 WHERE id = ?1 AND resolved_at IS NULL",
        &[id.into(), at_ms.into(), resolution.into()],
    )?;
    Ok(())
}

/// Marks an alert seen; false when there is no such alert.
pub(crate) fn ack_alert(db: &dyn Db, id: i64, at_ms: i64) -> Result<bool, StoreError> {
    let changed = db.execute(
        "UPDATE alerts SET acked_at = coalesce(acked_at, ?2) WHERE id = ?1",
        &[id.into(), at_ms.into()],
    )?;
    Ok(changed > 0)
}

/// The highest alert id written (0 without any).
pub fn max_alert_id(db: &dyn Db) -> Result<i64, StoreError> {
    Ok(db
        .first(
            "SELECT CAST(coalesce(max(id), 0) AS BIGINT) FROM alerts",
            &[],
        )?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0))
}

/// At start: where ids continue, which context alerts stay active, and the rest closed as `restart` (call in one
/// transaction).
pub(crate) fn restore_alerts(db: &dyn Db, now_ms: i64) -> Result<Restored, StoreError> {
    let max_id = max_alert_id(db)?;
    let context = alerts_of(db.query(
        &format!(
            "SELECT {COLUMNS} FROM alerts WHERE resolved_at IS NULL AND kind = 'context' \
             AND session_id IS NOT NULL ORDER BY id"
        ),
        &[],
    )?)?;
    let closed = db.execute(
        "UPDATE alerts SET resolved_at = ?1, resolution = 'restart'
         WHERE resolved_at IS NULL AND (kind <> 'context' OR session_id IS NULL)",
        &[now_ms.into()],
    )?;
    Ok(Restored {
        max_id,
        context,
        closed: closed as usize,
    })
}

/// Alerts newest first: `Some(true)` unresolved only, `Some(false)` resolved only.
pub fn list_alerts(
    db: &dyn Db,
    active: Option<bool>,
    limit: u32,
) -> Result<Vec<Alert>, StoreError> {
    let filter = match active {
        None => "",
        Some(true) => "WHERE resolved_at IS NULL",
        Some(false) => "WHERE resolved_at IS NOT NULL",
    };
    alerts_of(db.query(
        &format!("SELECT {COLUMNS} FROM alerts {filter} ORDER BY fired_at DESC, id DESC LIMIT ?1"),
        &[i64::from(limit).into()],
    )?)
}

pub fn get_alert(db: &dyn Db, id: i64) -> Result<Option<Alert>, StoreError> {
    Ok(alerts_of(db.query(
        &format!("SELECT {COLUMNS} FROM alerts WHERE id = ?1"),
        &[id.into()],
    )?)?
    .pop())
}

/// The rows as alerts, leaving out kinds this version does not know.
fn alerts_of(rows: Rows) -> Result<Vec<Alert>, StoreError> {
    let mut out = Vec::with_capacity(rows.rows.len());
    for row in &rows.rows {
        if let Some(alert) = read_alert(row)? {
            out.push(alert);
        }
    }
    Ok(out)
}

/// A row as an alert; `None` for a kind this version does not know.
fn read_alert(row: &[Owned]) -> Result<Option<Alert>, StoreError> {
    let Some(kind) = AlertKind::parse(&row.text(3)?) else {
        return Ok(None);
    };
    let number = |i: usize| match row.get(i) {
        Some(Owned::Null) | None => Ok(0.0),
        _ => row.real(i),
    };
    Ok(Some(Alert {
        id: row.int(0)?,
        fired_at_ms: row.int(1)?,
        resolved_at_ms: row.opt_int(2)?,
        kind,
        severity: Severity::parse(&row.text(4)?).unwrap_or(Severity::Warning),
        session_id: row.opt_int(5)?,
        subject: row.opt_text(6)?,
        message: row.text(7)?,
        value: number(8)?,
        threshold: number(9)?,
        resolution: row.opt_text(10)?,
        acked_at_ms: row.opt_int(11)?,
    }))
}
