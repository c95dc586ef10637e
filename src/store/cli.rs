//! `kimi-proxy sessions …` and `kimi-proxy requests tail`: the same database, from another process, while the
//! server runs, on either backend (the shared queries of [`super::db::Db`]). SQLite reads use a read-only
//! connection; `delete` writes (WAL and the busy timeout let it share). PostgreSQL: one connection of its own.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::db::Db;
use super::export::{self, Format};
use super::pg::{Location, PgStore};
use super::query::{self, Order, RequestFilter, SessionSort};
use super::{Store, StoreError, delete_sessions_in, open_read_only};

/// Errors of the store commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
}

/// A read-only connection; an older schema is upgraded first (that one write is unavoidable).
pub fn reader(path: &Path) -> Result<Connection, StoreError> {
    match open_read_only(path) {
        Err(StoreError::Outdated { .. }) => {
            drop(Store::open(path)?);
            open_read_only(path)
        }
        other => other,
    }
}

/// The connection of one command, either backend.
enum Conn {
    Sqlite(Connection),
    Postgres(Box<PgStore>),
}

impl Conn {
    /// SQLite: [`reader`]; PostgreSQL: a connection, the schema created or upgraded as `serve` does.
    fn open(location: &Location) -> Result<Conn, StoreError> {
        match location {
            Location::Sqlite(path) => Ok(Conn::Sqlite(reader(path)?)),
            Location::Postgres(url) => Ok(Conn::Postgres(Box::new(PgStore::open(url)?))),
        }
    }

    fn with<T>(
        &mut self,
        f: impl FnOnce(&dyn Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Conn::Sqlite(conn) => f(conn),
            Conn::Postgres(pg) => pg.with(f),
        }
    }
}

pub fn sessions_list(
    location: &Location,
    limit: u32,
    sort: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let sort: SessionSort =
        serde_json::from_value(Value::String(sort.to_string())).map_err(|_| {
            CliError::Usage(format!(
                "--sort must be last_activity, created_at, cost or requests, not `{sort}`"
            ))
        })?;
    let sessions =
        Conn::open(location)?.with(|db| query::list_sessions(db, sort, Order::Desc, limit, 0))?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&sessions).unwrap_or_default()
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>6}  {:<12} {:>7} {:>5} {:>12} {:>12} {:>10} {:>8}  {:<20}  NAME",
        "ID",
        "SOURCE",
        "REQS",
        "ERR",
        "PROMPT",
        "COMPLETION",
        "COST $",
        "CONTEXT",
        "LAST ACTIVITY (UTC)"
    )?;
    for s in sessions {
        let context = s
            .context_used
            .map(|u| format!("{:.0}%", u * 100.0))
            .unwrap_or_else(|| "-".to_string());
        writeln!(
            out,
            "{:>6}{} {:<12} {:>7} {:>5} {:>12} {:>12} {:>10.4} {:>8}  {:<20}  {}",
            s.id,
            if s.active { "*" } else { " " },
            s.source,
            s.request_count,
            s.error_count,
            s.prompt_tokens,
            s.completion_tokens,
            s.cost_usd,
            context,
            iso_utc(s.last_activity_ms),
            s.name.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

pub fn sessions_show(
    location: &Location,
    id: i64,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut conn = Conn::open(location)?;
    let Some(session) = conn.with(|db| query::get_session(db, id))? else {
        return Err(StoreError::UnknownSession(id).into());
    };
    let filter = RequestFilter {
        session: Some(id),
        ..RequestFilter::default()
    };
    let requests = conn.with(|db| query::list_requests(db, &filter, 20, 0))?;
    if json {
        let value = serde_json::json!({"session": session, "latest_requests": requests});
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        )?;
        return Ok(());
    }
    let value = serde_json::to_value(&session).unwrap_or_default();
    if let Value::Object(fields) = value {
        for (key, value) in fields {
            writeln!(out, "{key:<18} {}", plain(&value))?;
        }
    }
    writeln!(out, "\nlatest requests:")?;
    for request in requests.iter().rev() {
        writeln!(out, "{}", request_line(request))?;
    }
    Ok(())
}

pub fn sessions_export(
    location: &Location,
    id: i64,
    format: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let format = Format::parse(format)
        .ok_or_else(|| CliError::Usage(format!("--format must be csv or json, not `{format}`")))?;
    let mut conn = Conn::open(location)?;
    if conn.with(|db| query::get_session(db, id))?.is_none() {
        return Err(StoreError::UnknownSession(id).into());
    }
    let filter = RequestFilter {
        session: Some(id),
        ..RequestFilter::default()
    };
    let mut failed = None;
    conn.with(|db| {
        export::export_requests(db, &filter, format, export::PAGE_ROWS, |chunk| {
            match out.write_all(&chunk) {
                Ok(()) => true,
                Err(error) => {
                    failed = Some(error);
                    false
                }
            }
        })
    })?;
    match failed {
        Some(error) => Err(error.into()),
        None => Ok(out.flush()?),
    }
}

pub fn sessions_delete(
    location: &Location,
    ids: &[i64],
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let deleted = match location {
        Location::Sqlite(path) => {
            if !path.exists() {
                return Err(StoreError::Missing(path.to_path_buf()).into());
            }
            Store::open(path)?.delete_sessions(None, ids)?
        }
        Location::Postgres(url) => {
            PgStore::open(url)?.transact(|db| delete_sessions_in(db, ids))?
        }
    };
    writeln!(out, "deleted {deleted} of {} sessions", ids.len())?;
    Ok(())
}

pub fn requests_tail(
    location: &Location,
    lines: u32,
    follow: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut conn = Conn::open(location)?;
    let mut last = 0;
    let print = |rows: Vec<Map<String, Value>>,
                 last: &mut i64,
                 out: &mut dyn Write|
     -> Result<(), CliError> {
        for row in rows {
            if let Some(id) = row.get("id").and_then(Value::as_i64) {
                *last = (*last).max(id);
            }
            if json {
                writeln!(out, "{}", Value::Object(row))?;
            } else {
                writeln!(out, "{}", request_line(&row))?;
            }
        }
        out.flush()?;
        Ok(())
    };
    print(
        conn.with(|db| query::last_requests(db, lines))?,
        &mut last,
        out,
    )?;
    if !follow {
        return Ok(());
    }
    if lines == 0 {
        // Nothing printed: follow from the newest request, not from the first one ever stored.
        let newest = conn.with(|db| query::last_requests(db, 1))?;
        last = newest
            .first()
            .and_then(|row| row.get("id"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let rows = conn.with(|db| query::requests_after(db, last, 1000))?;
        print(rows, &mut last, out)?;
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// One request on one line.
pub fn request_line(row: &Map<String, Value>) -> String {
    let int = |key: &str| row.get(key).and_then(Value::as_i64).unwrap_or(0);
    let text = |key: &str| row.get(key).and_then(Value::as_str).unwrap_or("");
    let session = row
        .get("session_id")
        .and_then(Value::as_i64)
        .map(|s| format!("s{s}"))
        .unwrap_or_else(|| "-".to_string());
    let preview = text("preview");
    format!(
        "{}  #{:<7} {:<6} {:<28} {:>3}  {:>7} + {:<6} tok  ${:<9.5} {:>7} ms{}{}",
        iso_utc(int("started_at")),
        int("id"),
        session,
        text("model"),
        int("status"),
        int("prompt_tokens"),
        int("completion_tokens"),
        row.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0),
        int("latency_us") / 1000,
        if preview.is_empty() { "" } else { "  " },
        if preview.is_empty() {
            String::new()
        } else {
            format!("{preview:?}")
        }
    )
}

/// `2026-01-02T03:04:05Z` from Unix milliseconds, clamped to the years 1970–9999 that the formatter takes (a
/// stored time outside them is damage, not a reason to fail an export).
pub fn iso_utc(ms: i64) -> String {
    const LAST_MS: i64 = 253_402_300_799_999;
    let ms = u64::try_from(ms.clamp(0, LAST_MS)).unwrap_or(0);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(iso_utc(1_767_323_045_000), "2026-01-02T03:04:05Z");
        assert_eq!(iso_utc(-1), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(i64::MAX), "9999-12-31T23:59:59Z");
    }
}
