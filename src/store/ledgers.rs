//! Usage imported from the records coding agents keep on disk (`kimi-ledgers`): the entries, where each file was
//! read up to, and the one picture the reports draw from proxied requests and imported entries together.
//!
//! Idempotent: an entry's key (per agent) is unique, and each file's cursor is saved in the transaction that
//! writes the entries read up to it. An entry the proxy itself served is linked to that request
//! (`proxied_request_id`) and left out of the picture, so nothing is counted twice.

use kimi_ledgers::{Cursor, FileIdentity, UsageEntry};

use super::db::{Db, RowExt, Value};
use super::pg::{Location, PgStore};
use super::{Store, StoreError, unix_ms};

/// Schema v7 (appended to [`super::schema::MIGRATIONS`]).
pub const MIGRATION: &str = r#"
CREATE TABLE ledger_files (
    source      TEXT NOT NULL,
    path        TEXT NOT NULL,
    offset      INTEGER NOT NULL,
    device      INTEGER,
    inode       INTEGER,
    state       TEXT,
    stamp_len   INTEGER,
    stamp_mtime INTEGER,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (source, path)
);

CREATE TABLE usage_entries (
    id                       INTEGER PRIMARY KEY,
    source                   TEXT NOT NULL,
    entry_key                TEXT NOT NULL,
    timestamp                INTEGER NOT NULL,
    session                  TEXT,
    project                  TEXT,
    model                    TEXT,
    message_id               TEXT,
    request_id               TEXT,
    input_tokens             INTEGER NOT NULL,
    output_tokens            INTEGER NOT NULL,
    cache_creation_tokens    INTEGER NOT NULL,
    cache_creation_1h_tokens INTEGER NOT NULL,
    cache_read_tokens        INTEGER NOT NULL,
    reasoning_tokens         INTEGER NOT NULL,
    cost_usd                 REAL NOT NULL,
    cost_estimated           INTEGER NOT NULL,
    agent_cost_usd           REAL,
    sidechain                INTEGER NOT NULL,
    proxied_request_id       INTEGER,
    imported_at              INTEGER NOT NULL,
    UNIQUE (source, entry_key)
);
CREATE INDEX usage_entries_by_time ON usage_entries (timestamp);
CREATE INDEX usage_entries_by_message ON usage_entries (source, message_id) WHERE message_id IS NOT NULL;
CREATE INDEX usage_entries_sidechains ON usage_entries (source) WHERE sidechain = 1;
CREATE INDEX usage_entries_by_request ON usage_entries (proxied_request_id) WHERE proxied_request_id IS NOT NULL;
"#;

/// An entry with its price from the catalog.
#[derive(Debug, Clone)]
pub struct PricedEntry {
    pub entry: UsageEntry,
    pub cost_usd: f64,
    /// No catalog price for the model: the cost is the agent's own, or zero.
    pub cost_estimated: bool,
}

/// What writing one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    pub imported: u64,
    /// Entries already in the store (read before, another file's copy, a sidechain's replay).
    pub known: u64,
    /// Whole-document entries (Cline's tasks) whose aggregates grew.
    pub updated: u64,
    /// Entries the proxy had served itself: kept, linked to the request, not counted again.
    pub proxied: u64,
}

impl ImportOutcome {
    pub fn add(&mut self, other: ImportOutcome) {
        self.imported += other.imported;
        self.known += other.known;
        self.updated += other.updated;
        self.proxied += other.proxied;
    }
}

/// A proxied request started at most this long before the agent wrote the entry (the agent writes on completion).
const MATCH_BEFORE_MS: i64 = 15 * 60_000;
const MATCH_AFTER_MS: i64 = 5_000;

impl Store {
    /// A larger page cache for a long import (the default 2 MiB makes SQLite re-read index pages it just wrote).
    pub fn prepare_for_import(&self) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "cache_size", -16_384)?;
        Ok(())
    }

    /// Where the last import of `path` stopped.
    pub fn ledger_cursor(&self, source: &str, path: &str) -> Result<Option<Cursor>, StoreError> {
        ledger_cursor(&self.conn, source, path)
    }

    /// [`import_batch`] in one transaction.
    pub fn import_ledger_batch(
        &mut self,
        source: &str,
        path: &str,
        cursor: Option<&Cursor>,
        entries: &[PricedEntry],
        replace: bool,
    ) -> Result<ImportOutcome, StoreError> {
        self.transact(|db| import_batch(db, source, path, cursor, entries, replace))
    }
}

/// Where the importer writes: the SQLite file or the PostgreSQL database, through its own connection (as
/// `kimi-proxy import` does from another process), the same statements on both.
pub enum LedgerStore {
    Sqlite(Store),
    Postgres(PgStore),
}

impl LedgerStore {
    /// Opens (creating or upgrading) the store at `location`.
    pub fn open(location: &Location) -> Result<LedgerStore, StoreError> {
        match location {
            Location::Sqlite(path) => {
                let store = Store::open(path)?;
                store.prepare_for_import()?;
                Ok(LedgerStore::Sqlite(store))
            }
            Location::Postgres(url) => Ok(LedgerStore::Postgres(PgStore::open(url)?)),
        }
    }

    /// Where the last import of `path` stopped.
    pub fn cursor(&mut self, source: &str, path: &str) -> Result<Option<Cursor>, StoreError> {
        match self {
            LedgerStore::Sqlite(store) => ledger_cursor(store.connection(), source, path),
            LedgerStore::Postgres(pg) => pg.with(|db| ledger_cursor(db, source, path)),
        }
    }

    /// [`import_batch`] in one transaction.
    pub fn import_batch(
        &mut self,
        source: &str,
        path: &str,
        cursor: Option<&Cursor>,
        entries: &[PricedEntry],
        replace: bool,
    ) -> Result<ImportOutcome, StoreError> {
        let f = |db: &dyn Db| import_batch(db, source, path, cursor, entries, replace);
        match self {
            LedgerStore::Sqlite(store) => store.transact(f),
            LedgerStore::Postgres(pg) => pg.transact(f),
        }
    }
}

/// Where the last import of `path` stopped.
pub fn ledger_cursor(db: &dyn Db, source: &str, path: &str) -> Result<Option<Cursor>, StoreError> {
    let Some(row) = db.first(
        "SELECT \"offset\", device, inode, state, stamp_len, stamp_mtime FROM ledger_files
         WHERE source = ?1 AND path = ?2",
        &[Value::Text(source), Value::Text(path)],
    )?
    else {
        return Ok(None);
    };
    let (device, inode) = (row.opt_int(1)?, row.opt_int(2)?);
    let (stamp_len, stamp_mtime) = (row.opt_int(4)?, row.opt_int(5)?);
    Ok(Some(Cursor {
        offset: row.int(0)?.max(0) as u64,
        identity: device.zip(inode).map(|(d, i)| FileIdentity {
            device: d as u64,
            inode: i as u64,
        }),
        state: row.opt_text(3)?,
        stamp: stamp_len
            .zip(stamp_mtime)
            .map(|(l, m)| (l.max(0) as u64, m)),
    }))
}

/// Writes `entries` read from `path` of agent `source` and, given one, saves the file's cursor; the caller runs it
/// in one transaction (a long file is written in several batches, the cursor with the last: a crash in between
/// reads the file again, and the keys make that harmless). `replace` (whole-document sources) updates entries
/// whose aggregates changed.
pub fn import_batch(
    db: &dyn Db,
    source: &str,
    path: &str,
    cursor: Option<&Cursor>,
    entries: &[PricedEntry],
    replace: bool,
) -> Result<ImportOutcome, StoreError> {
    let now = unix_ms();
    let mut outcome = ImportOutcome::default();
    // Look-ups most imports never need: proxied requests in the batch's time range, sidechain entries.
    let lo = entries
        .iter()
        .map(|p| p.entry.timestamp_ms)
        .min()
        .unwrap_or(0);
    let hi = entries
        .iter()
        .map(|p| p.entry.timestamp_ms)
        .max()
        .unwrap_or(0);
    let exists = |sql: &str, params: &[Value<'_>]| -> Result<bool, StoreError> {
        Ok(db.first(sql, params)?.map_or(Ok(0), |r| r.int(0))? != 0)
    };
    let any_requests = exists(
        "SELECT EXISTS (SELECT 1 FROM requests WHERE started_at BETWEEN ?1 AND ?2)",
        &[
            Value::Int(lo - MATCH_BEFORE_MS),
            Value::Int(hi + MATCH_AFTER_MS),
        ],
    )?;
    let mut any_sidechains = exists(
        "SELECT EXISTS (SELECT 1 FROM usage_entries WHERE source = ?1 AND sidechain = 1)",
        &[Value::Text(source)],
    )?;
    for priced in entries {
        let e = &priced.entry;
        if replace {
            let found = db.first(
                "SELECT id, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, agent_cost_usd
                 FROM usage_entries WHERE source = ?1 AND entry_key = ?2",
                &[Value::Text(source), Value::Text(&e.key)],
            )?;
            if let Some(r) = found {
                let changed = (r.int(1)?, r.int(2)?, r.int(3)?, r.int(4)?, r.opt_real(5)?)
                    != (
                        clamp(e.input_tokens),
                        clamp(e.output_tokens),
                        clamp(e.cache_creation_tokens),
                        clamp(e.cache_read_tokens),
                        e.agent_cost_usd,
                    );
                if changed {
                    db.execute(
                        "UPDATE usage_entries SET timestamp = ?2, model = ?3, input_tokens = ?4, output_tokens = ?5,
                             cache_creation_tokens = ?6, cache_read_tokens = ?7, cost_usd = ?8, cost_estimated = ?9,
                             agent_cost_usd = ?10, imported_at = ?11
                         WHERE id = ?1",
                        &[
                            Value::Int(r.int(0)?),
                            Value::Int(e.timestamp_ms),
                            e.model.as_deref().into(),
                            Value::Int(clamp(e.input_tokens)),
                            Value::Int(clamp(e.output_tokens)),
                            Value::Int(clamp(e.cache_creation_tokens)),
                            Value::Int(clamp(e.cache_read_tokens)),
                            Value::Real(priced.cost_usd),
                            priced.cost_estimated.into(),
                            e.agent_cost_usd.into(),
                            Value::Int(now),
                        ],
                    )?;
                    outcome.updated += 1;
                } else {
                    outcome.known += 1;
                }
                continue;
            }
        }
        // A sidechain replaying a parent message (same message id, another request id) is the parent's copy:
        // the parent's entry is kept, whichever file was read first.
        if e.sidechain
            && let Some(message_id) = e.message_id.as_deref()
            && exists(
                "SELECT EXISTS (SELECT 1 FROM usage_entries
                 WHERE source = ?1 AND message_id = ?2 AND entry_key <> ?3)",
                &[
                    Value::Text(source),
                    Value::Text(message_id),
                    Value::Text(&e.key),
                ],
            )?
        {
            outcome.known += 1;
            continue;
        }
        let proxied_id: Option<i64> = match e.model.as_deref() {
            Some(model) if any_requests => db
                .first(
                    "SELECT r.id FROM requests r
                     WHERE r.started_at BETWEEN ?1 AND ?2
                       AND (r.upstream_model = ?3 OR r.model = ?3)
                       AND r.completion_tokens = ?4
                       AND r.prompt_tokens IN (?5, ?6)
                       AND NOT EXISTS (SELECT 1 FROM usage_entries u WHERE u.proxied_request_id = r.id)
                     ORDER BY abs(r.started_at - ?7) LIMIT 1",
                    &[
                        Value::Int(e.timestamp_ms - MATCH_BEFORE_MS),
                        Value::Int(e.timestamp_ms + MATCH_AFTER_MS),
                        Value::Text(model),
                        Value::Int(clamp(e.output_tokens)),
                        Value::Int(clamp(e.input_tokens + e.cache_read_tokens)),
                        Value::Int(clamp(
                            e.input_tokens + e.cache_read_tokens + e.cache_creation_tokens,
                        )),
                        Value::Int(e.timestamp_ms),
                    ],
                )?
                .map(|r| r.int(0))
                .transpose()?,
            _ => None,
        };
        let inserted = db.execute(
            "INSERT INTO usage_entries (source, entry_key, timestamp, session, project, model, message_id,
                 request_id, input_tokens, output_tokens, cache_creation_tokens, cache_creation_1h_tokens,
                 cache_read_tokens, reasoning_tokens, cost_usd, cost_estimated, agent_cost_usd, sidechain,
                 proxied_request_id, imported_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)
             ON CONFLICT (source, entry_key) DO NOTHING",
            &[
                Value::Text(source),
                Value::Text(&e.key),
                Value::Int(e.timestamp_ms),
                e.session.as_deref().into(),
                e.project.as_deref().into(),
                e.model.as_deref().into(),
                e.message_id.as_deref().into(),
                e.request_id.as_deref().into(),
                Value::Int(clamp(e.input_tokens)),
                Value::Int(clamp(e.output_tokens)),
                Value::Int(clamp(e.cache_creation_tokens)),
                Value::Int(clamp(e.cache_creation_1h_tokens)),
                Value::Int(clamp(e.cache_read_tokens)),
                Value::Int(clamp(e.reasoning_tokens)),
                Value::Real(priced.cost_usd),
                priced.cost_estimated.into(),
                e.agent_cost_usd.into(),
                e.sidechain.into(),
                proxied_id.into(),
                Value::Int(now),
            ],
        )?;
        if inserted == 0 {
            outcome.known += 1;
            continue;
        }
        outcome.imported += 1;
        if proxied_id.is_some() {
            outcome.proxied += 1;
        }
        if e.sidechain {
            any_sidechains = true;
        } else if any_sidechains && let Some(message_id) = e.message_id.as_deref() {
            // The parent came after its replay: the replay goes.
            db.execute(
                "DELETE FROM usage_entries
                 WHERE source = ?1 AND message_id = ?2 AND sidechain = 1 AND entry_key <> ?3",
                &[
                    Value::Text(source),
                    Value::Text(message_id),
                    Value::Text(&e.key),
                ],
            )?;
        }
    }
    if let Some(cursor) = cursor {
        let identity = cursor.identity;
        db.execute(
            "INSERT INTO ledger_files (source, path, \"offset\", device, inode, state, stamp_len, stamp_mtime,
                 updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (source, path) DO UPDATE SET \"offset\" = excluded.\"offset\", device = excluded.device,
                 inode = excluded.inode, state = excluded.state, stamp_len = excluded.stamp_len,
                 stamp_mtime = excluded.stamp_mtime, updated_at = excluded.updated_at",
            &[
                Value::Text(source),
                Value::Text(path),
                Value::Int(clamp(cursor.offset)),
                identity.map(|i| i.device as i64).into(),
                identity.map(|i| i.inode as i64).into(),
                cursor.state.as_deref().into(),
                cursor.stamp.map(|(l, _)| clamp(l)).into(),
                cursor.stamp.map(|(_, m)| m).into(),
                Value::Int(now),
            ],
        )?;
    }
    Ok(outcome)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One row of the picture: a proxied request or an imported entry not served by the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// `proxy`, or the agent's name.
    pub source: String,
    pub timestamp_ms: i64,
    pub session: Option<String>,
    pub project: Option<String>,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cache_read_tokens: i64,
    pub cost_usd: f64,
    pub agent_cost_usd: Option<f64>,
}

/// Which rows of the picture.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// `proxy` or an agent's name.
    pub source: Option<String>,
    pub project: Option<String>,
}

/// Streams the picture's rows, oldest first, to `row`: proxied requests (input excluding cached tokens) and
/// imported entries the proxy did not serve.
pub fn usage_rows(
    db: &dyn Db,
    filter: &UsageFilter,
    row: &mut dyn FnMut(UsageRow),
) -> Result<(), StoreError> {
    // Filters compare against typed placeholders (`CAST`): PostgreSQL cannot type `?1 IS NULL` alone.
    db.each(
        "SELECT source, ts, session, project, model, input, output, creation, cache_read, cost, agent_cost FROM (
             SELECT 'proxy' AS source, started_at AS ts, CAST(session_id AS TEXT) AS session,
                    CAST(NULL AS TEXT) AS project, model,
                    prompt_tokens - coalesce(cached_reported, 0) AS input, completion_tokens AS output,
                    0 AS creation, coalesce(cached_reported, 0) AS cache_read, cost_usd AS cost,
                    CAST(NULL AS REAL) AS agent_cost
             FROM requests
             UNION ALL
             SELECT source, timestamp, session, project, coalesce(model, 'unknown'), input_tokens, output_tokens,
                    cache_creation_tokens, cache_read_tokens, cost_usd, agent_cost_usd
             FROM usage_entries WHERE proxied_request_id IS NULL
         ) AS picture
         WHERE (CAST(?1 AS BIGINT) IS NULL OR ts >= ?1) AND (CAST(?2 AS BIGINT) IS NULL OR ts < ?2)
           AND (CAST(?3 AS TEXT) IS NULL OR source = ?3) AND (CAST(?4 AS TEXT) IS NULL OR project = ?4)
         ORDER BY ts",
        &[
            filter.since_ms.into(),
            filter.until_ms.into(),
            filter.source.as_deref().into(),
            filter.project.as_deref().into(),
        ],
        &mut |r| {
            row(UsageRow {
                source: r.text(0)?,
                timestamp_ms: r.int(1)?,
                session: r.opt_text(2)?,
                project: r.opt_text(3)?,
                model: r.text(4)?,
                input_tokens: r.int(5)?,
                output_tokens: r.int(6)?,
                cache_creation_tokens: r.int(7)?,
                cache_read_tokens: r.int(8)?,
                cost_usd: r.real(9)?,
                agent_cost_usd: r.opt_real(10)?,
            });
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn entry(key: &str, message: Option<&str>, sidechain: bool) -> PricedEntry {
        PricedEntry {
            entry: UsageEntry {
                key: key.into(),
                timestamp_ms: 1_000,
                model: Some("claude-x".into()),
                message_id: message.map(str::to_string),
                input_tokens: 10,
                output_tokens: 5,
                sidechain,
                ..UsageEntry::default()
            },
            cost_usd: 0.5,
            cost_estimated: false,
        }
    }

    #[test]
    fn importing_twice_adds_nothing_and_sidechain_replays_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let cursor = Cursor {
            offset: 42,
            state: Some("{}".into()),
            ..Cursor::default()
        };
        let batch = [
            entry("m1:r1", Some("m1"), false),
            entry("m2:r2", Some("m2"), false),
            // The sidechain replays m1 under another request id.
            entry("m1:r9", Some("m1"), true),
        ];
        let first = store
            .import_ledger_batch("claude-code", "/f", Some(&cursor), &batch, false)
            .unwrap();
        assert_eq!((first.imported, first.known), (2, 1));
        let again = store
            .import_ledger_batch("claude-code", "/f", Some(&cursor), &batch, false)
            .unwrap();
        assert_eq!((again.imported, again.known), (0, 3));
        assert_eq!(
            store.ledger_cursor("claude-code", "/f").unwrap(),
            Some(cursor)
        );
        let mut rows = Vec::new();
        usage_rows(store.connection(), &UsageFilter::default(), &mut |r| {
            rows.push(r)
        })
        .unwrap();
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn a_parent_read_after_its_sidechain_replay_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let replay = [entry("m1:r9", Some("m1"), true)];
        store
            .import_ledger_batch("claude-code", "/side", None, &replay, false)
            .unwrap();
        let parent = [entry("m1:r1", Some("m1"), false)];
        let outcome = store
            .import_ledger_batch("claude-code", "/main", None, &parent, false)
            .unwrap();
        assert_eq!(outcome.imported, 1);
        let mut rows = Vec::new();
        usage_rows(store.connection(), &UsageFilter::default(), &mut |r| {
            rows.push(r)
        })
        .unwrap();
        assert_eq!(rows.len(), 1);
        // And the replay read again stays out.
        let again = store
            .import_ledger_batch("claude-code", "/side", None, &replay, false)
            .unwrap();
        assert_eq!((again.imported, again.known), (0, 1));
    }

    #[test]
    fn whole_document_entries_are_replaced_when_they_grow() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let mut task = entry("task-1", None, false);
        store
            .import_ledger_batch("cline", "/t", None, &[task.clone()], true)
            .unwrap();
        task.entry.output_tokens = 50;
        let outcome = store
            .import_ledger_batch("cline", "/t", None, &[task], true)
            .unwrap();
        assert_eq!(outcome.updated, 1);
    }
}
