//! `kimi-proxy migrate --from FILE.db --to postgres://…`: an SQLite store copied into PostgreSQL, for a team
//! moving one instance's history onto the shared database.
//!
//! - **What:** the tables PostgreSQL has ([`super::pg::PG_TABLES`]: sessions, requests, alerts, masked originals,
//!   stored responses; and the imported agents' usage, [`super::pg::PG_LEDGER_TABLES`]), with their ids, so sessions keep their requests and links keep working. Both sides are
//!   brought to this build's schema version first, so their columns match.
//! - **Resumable:** rows go in key order, a committed transaction per page; a run that stopped (or was stopped
//!   with `--max-rows`) continues after the highest id already copied, and a row already there is skipped
//!   (`ON CONFLICT DO NOTHING`). The run is remembered in `store_migrations` (source file, start, end) on the
//!   target: a database that holds rows of anything else is refused, so two histories are never mixed.
//! - **Verified:** at the end, row counts of every table and the requests' and sessions' token and cost totals
//!   are compared between the two; any difference is an error.
//! - Identity sequences are moved past the copied ids, so new rows written by `serve` do not collide.

use std::io::Write;
use std::path::Path;

use postgres::types::ToSql;

use super::StoreError;
use super::cli::{CliError, reader};
use super::db::{Db, Owned, Value};
use super::pg::{PG_LEDGER_TABLES, PG_TABLES, PgStore, PgUrl};

/// Rows read and written per transaction.
const PAGE_ROWS: i64 = 500;
/// PostgreSQL takes at most 65,535 parameters per statement.
const MAX_PARAMS: usize = 65_535;

/// What one run did.
#[derive(Debug, Default, serde::Serialize)]
pub struct MigrateReport {
    pub tables: Vec<TableReport>,
    /// The copy stopped at `--max-rows`: run again to continue.
    pub partial: bool,
    /// Counts and totals compared equal (only checked once every row is copied).
    pub verified: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct TableReport {
    pub table: &'static str,
    pub source_rows: i64,
    pub copied: i64,
    pub target_rows: i64,
}

/// A column of the target, with the PostgreSQL type a value must be sent as.
struct Column {
    name: String,
    kind: PgKind,
}

#[derive(Clone, Copy)]
enum PgKind {
    Int,
    Real,
    Text,
    Bytes,
}

/// Copies the SQLite store at `from` into the PostgreSQL database at `to`; at most `max_rows` rows this run.
pub fn migrate(
    from: &Path,
    to: &PgUrl,
    max_rows: Option<u64>,
    out: &mut dyn Write,
) -> Result<MigrateReport, CliError> {
    if !from.exists() {
        return Err(StoreError::Missing(from.to_path_buf()).into());
    }
    let source = reader(from)?;
    let source_name = std::fs::canonicalize(from)
        .unwrap_or_else(|_| from.to_path_buf())
        .display()
        .to_string();
    // Creates or upgrades the target's schema to this build's version (as `serve` would).
    drop(PgStore::open(to)?);
    let mut target = to.connect()?;
    claim(&mut target, &source_name, to)?;
    let mut report = MigrateReport::default();
    let mut budget = max_rows.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
    for table in migrated_tables() {
        let columns = target_columns(&mut target, table)?;
        let copied = copy_table(&source, &mut target, table, &columns, &mut budget)?;
        let source_rows = count(&source, table)?;
        let target_rows = pg_count(&mut target, table)?;
        writeln!(
            out,
            "{table:<15} {copied:>9} copied   {target_rows:>9} of {source_rows:>9} rows in PostgreSQL"
        )?;
        report.tables.push(TableReport {
            table,
            source_rows,
            copied,
            target_rows,
        });
        if budget == 0 {
            report.partial = true;
            break;
        }
    }
    advance_sequences(&mut target)?;
    if report.partial {
        writeln!(
            out,
            "stopped after {} rows (--max-rows): run the same command again to continue",
            max_rows.unwrap_or_default()
        )?;
        return Ok(report);
    }
    verify(&source, &mut target)?;
    target
        .execute(
            "UPDATE store_migrations SET finished_at = $1 WHERE source = $2",
            &[&crate::util::unix_ms(), &source_name],
        )
        .map_err(StoreError::from)?;
    report.verified = true;
    writeln!(
        out,
        "verified: row counts and the requests' and sessions' token and cost totals are equal"
    )?;
    Ok(report)
}

/// Registers this run on the target, or refuses a target that holds other rows.
fn claim(target: &mut postgres::Client, source: &str, to: &PgUrl) -> Result<(), StoreError> {
    target.batch_execute(
        "CREATE TABLE IF NOT EXISTS store_migrations (
             source      TEXT PRIMARY KEY,
             started_at  BIGINT NOT NULL,
             finished_at BIGINT
         )",
    )?;
    let known = target
        .query_opt(
            "SELECT 1 FROM store_migrations WHERE source = $1",
            &[&source],
        )?
        .is_some();
    if known {
        return Ok(());
    }
    for table in migrated_tables() {
        let rows = pg_count(target, table)?;
        if rows > 0 {
            return Err(StoreError::Other(format!(
                "{to} already holds {rows} rows in `{table}` that did not come from {source}: migrate into an empty database"
            )));
        }
    }
    target.execute(
        "INSERT INTO store_migrations (source, started_at) VALUES ($1, $2)",
        &[&source, &crate::util::unix_ms()],
    )?;
    Ok(())
}

fn target_columns(target: &mut postgres::Client, table: &str) -> Result<Vec<Column>, StoreError> {
    let rows = target.query(
        "SELECT column_name, data_type FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name::text = $1::text ORDER BY ordinal_position",
        &[&table],
    )?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get(0)?;
            let kind = match row.try_get::<_, String>(1)?.as_str() {
                "bigint" | "integer" | "smallint" => PgKind::Int,
                "double precision" | "real" | "numeric" => PgKind::Real,
                "bytea" => PgKind::Bytes,
                _ => PgKind::Text,
            };
            Ok(Column { name, kind })
        })
        .collect()
}

/// Copies the rows of `table` the target lacks, a page per transaction, in rowid order.
fn copy_table(
    source: &rusqlite::Connection,
    target: &mut postgres::Client,
    table: &str,
    columns: &[Column],
    budget: &mut i64,
) -> Result<i64, StoreError> {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let source_columns = sqlite_columns(source, table)?;
    if let Some(missing) = source_columns.iter().find(|c| !names.contains(&c.as_str())) {
        return Err(StoreError::Other(format!(
            "`{table}.{missing}` exists in the SQLite store but not in PostgreSQL"
        )));
    }
    let columns: Vec<&Column> = columns
        .iter()
        .filter(|c| source_columns.contains(&c.name))
        .collect();
    let list = columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect::<Vec<_>>()
        .join(", ");
    // Integer ids are copied in order: everything up to the target's highest id is there already.
    let has_id = columns
        .iter()
        .any(|c| c.name == "id" && matches!(c.kind, PgKind::Int));
    let mut cursor = if has_id {
        let row = target.query_one(&format!("SELECT coalesce(max(id), 0) FROM {table}"), &[])?;
        row.try_get::<_, i64>(0)?
    } else {
        0
    };
    let select =
        format!("SELECT rowid, {list} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2");
    let rows_per_insert = (MAX_PARAMS / columns.len().max(1)).max(1);
    let mut copied = 0;
    while *budget > 0 {
        let page = source.query(
            &select,
            &[Value::Int(cursor), Value::Int(PAGE_ROWS.min(*budget))],
        )?;
        let Some(last) = page.rows.last() else {
            break;
        };
        let next_cursor = match last.first() {
            Some(Owned::Int(rowid)) => *rowid,
            _ => return Err(StoreError::Other(format!("`{table}`: a row without rowid"))),
        };
        let mut tx = target.transaction()?;
        for chunk in page.rows.chunks(rows_per_insert) {
            let mut params: Vec<Box<dyn ToSql + Sync>> =
                Vec::with_capacity(chunk.len() * columns.len());
            let mut tuples = Vec::with_capacity(chunk.len());
            for row in chunk {
                let mut placeholders = Vec::with_capacity(columns.len());
                for (column, value) in columns.iter().zip(&row[1..]) {
                    params.push(pg_value(column, value)?);
                    placeholders.push(format!("${}", params.len()));
                }
                tuples.push(format!("({})", placeholders.join(", ")));
            }
            let sql = format!(
                "INSERT INTO {table} ({list}) VALUES {} ON CONFLICT DO NOTHING",
                tuples.join(", ")
            );
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(AsRef::as_ref).collect();
            copied += tx.execute(&sql, &refs)? as i64;
        }
        tx.commit()?;
        *budget -= page.rows.len() as i64;
        cursor = next_cursor;
    }
    Ok(copied)
}

/// Every table copied, in an order that keeps references valid (sessions before their requests).
fn migrated_tables() -> impl Iterator<Item = &'static str> {
    PG_TABLES.iter().chain(PG_LEDGER_TABLES).copied()
}

fn sqlite_columns(source: &rusqlite::Connection, table: &str) -> Result<Vec<String>, StoreError> {
    let rows = source.query(
        &format!("SELECT name FROM pragma_table_info('{table}')"),
        &[],
    )?;
    Ok(rows
        .rows
        .into_iter()
        .filter_map(|row| match row.into_iter().next() {
            Some(Owned::Text(name)) => Some(name),
            _ => None,
        })
        .collect())
}

/// A value read from SQLite, as the target column's type takes it.
fn pg_value(column: &Column, value: &Owned) -> Result<Box<dyn ToSql + Sync>, StoreError> {
    let mismatch = || {
        StoreError::Other(format!(
            "column `{}`: cannot store {value:?} in PostgreSQL",
            column.name
        ))
    };
    Ok(match (column.kind, value) {
        (PgKind::Int, Owned::Null) => Box::new(None::<i64>),
        (PgKind::Int, Owned::Int(n)) => Box::new(*n),
        (PgKind::Int, Owned::Real(f)) if f.fract() == 0.0 => Box::new(*f as i64),
        (PgKind::Real, Owned::Null) => Box::new(None::<f64>),
        (PgKind::Real, Owned::Real(f)) => Box::new(*f),
        (PgKind::Real, Owned::Int(n)) => Box::new(*n as f64),
        (PgKind::Text, Owned::Null) => Box::new(None::<String>),
        (PgKind::Text, Owned::Text(s)) => Box::new(s.clone()),
        (PgKind::Text, Owned::Int(n)) => Box::new(n.to_string()),
        (PgKind::Text, Owned::Blob(b)) => Box::new(String::from_utf8_lossy(b).into_owned()),
        (PgKind::Bytes, Owned::Null) => Box::new(None::<Vec<u8>>),
        (PgKind::Bytes, Owned::Blob(b)) => Box::new(b.clone()),
        (PgKind::Bytes, Owned::Text(s)) => Box::new(s.as_bytes().to_vec()),
        _ => return Err(mismatch()),
    })
}

fn count(source: &rusqlite::Connection, table: &str) -> Result<i64, StoreError> {
    match source.first(&format!("SELECT count(*) FROM {table}"), &[])? {
        Some(row) => match row.first() {
            Some(Owned::Int(n)) => Ok(*n),
            _ => Ok(0),
        },
        None => Ok(0),
    }
}

fn pg_count(target: &mut postgres::Client, table: &str) -> Result<i64, StoreError> {
    Ok(target
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])?
        .try_get(0)?)
}

/// Moves each identity past the ids copied in, so the next row `serve` writes gets a fresh one.
fn advance_sequences(target: &mut postgres::Client) -> Result<(), StoreError> {
    for table in migrated_tables() {
        let sequence: Option<String> = match target.query_opt(
            "SELECT pg_get_serial_sequence($1::text, 'id') FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name::text = $1::text AND column_name = 'id'",
            &[&table],
        )? {
            Some(row) => row.try_get(0)?,
            None => None,
        };
        if let Some(sequence) = sequence {
            target.query_one(
                &format!(
                    "SELECT setval($1::text::regclass, coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
                ),
                &[&sequence],
            )?;
        }
    }
    Ok(())
}

/// Token and cost totals that must match on both sides.
const TOTALS: &[(&str, &str)] = &[
    (
        "requests",
        "CAST(coalesce(sum(prompt_tokens), 0) AS BIGINT), CAST(coalesce(sum(completion_tokens), 0) AS BIGINT), \
         coalesce(sum(cost_usd), 0)",
    ),
    (
        "sessions",
        "CAST(coalesce(sum(request_count), 0) AS BIGINT), CAST(coalesce(sum(prompt_tokens + completion_tokens), 0) AS BIGINT), \
         coalesce(sum(cost_usd), 0)",
    ),
];

fn verify(source: &rusqlite::Connection, target: &mut postgres::Client) -> Result<(), StoreError> {
    let mut differences = Vec::new();
    for table in migrated_tables() {
        let (ours, theirs) = (count(source, table)?, pg_count(target, table)?);
        if ours != theirs {
            differences.push(format!(
                "`{table}`: {ours} rows in SQLite, {theirs} in PostgreSQL"
            ));
        }
    }
    for (table, sums) in TOTALS {
        let sql = format!("SELECT {sums} FROM {table}");
        let ours = source.first(&sql, &[])?.unwrap_or_default();
        let row = target.query_one(&sql, &[])?;
        let theirs = [row.try_get::<_, i64>(0)?, row.try_get::<_, i64>(1)?];
        let cost: f64 = row.try_get(2)?;
        let same_tokens =
            ours.len() == 3 && ours[0] == Owned::Int(theirs[0]) && ours[1] == Owned::Int(theirs[1]);
        let our_cost = match ours.get(2) {
            Some(Owned::Real(f)) => *f,
            Some(Owned::Int(n)) => *n as f64,
            _ => 0.0,
        };
        // Sums of the same doubles in another order may differ in the last bits.
        let same_cost = (our_cost - cost).abs() <= 1e-9 * our_cost.abs().max(1.0);
        if !same_tokens || !same_cost {
            differences.push(format!(
                "`{table}` totals: SQLite {ours:?}, PostgreSQL [{}, {}, {cost}]",
                theirs[0], theirs[1]
            ));
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Other(format!(
            "the copy does not match its source (was either written to during the migration?): {}",
            differences.join("; ")
        )))
    }
}
