//! The PostgreSQL backend (`--db postgres://USER@HOST:PORT/DB`): the same schema, version numbers and shared
//! statements as SQLite ([`super::db`]), through the sync `postgres` client on the writer thread and the blocking
//! pool — the places rusqlite runs today, so the request path stays free of database I/O on both backends.
//!
//! Schema: a new database is created at [`PG_BASELINE`] from SQLite's own tables, translated ([`super::db::pg_ddl`]);
//! every later migration in [`super::schema::MIGRATIONS`] is applied translated the same way, so versions match.
//! Instances starting together serialise on an advisory lock.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

mod tls;

use super::db::{Db, Pg, PgStatements, pg_ddl};
use super::sessions::SessionResolver;
use super::{BatchReport, LATEST_VERSION, StoreError, schema, write_records};
use crate::accounting::RequestRecord;

/// The schema version a new PostgreSQL database starts at.
pub const PG_BASELINE: i64 = 9;
/// The tables `kimi-proxy migrate` copies into PostgreSQL.
pub(crate) const PG_TABLES: &[&str] = &[
    "sessions",
    "requests",
    "alerts",
    "masked_content",
    "responses",
];
/// The ledger import's tables ([`super::ledgers`]): PostgreSQL has them too (a database created before they were
/// ported gets them at its next open, see [`migrate`]); no migration after [`PG_BASELINE`] touches them.
pub(crate) const PG_LEDGER_TABLES: &[&str] = &["ledger_files", "usage_entries"];
/// Rows per `INSERT` (62 parameters each, under PostgreSQL's 65,535).
const PG_CHUNK: usize = 256;
/// Key of the advisory lock held while the schema is created or upgraded.
const MIGRATION_LOCK: i64 = 0x6b69_6d69_0001;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the store lives.
#[derive(Debug, Clone)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(Box<PgUrl>),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL is PostgreSQL; anything else is an SQLite file path.
    pub fn parse(text: &str) -> Result<Location, StoreError> {
        if is_postgres_url(text) {
            Ok(Location::Postgres(Box::new(PgUrl::parse(text)?)))
        } else {
            Ok(Location::Sqlite(PathBuf::from(text)))
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => write!(f, "{url}"),
        }
    }
}

pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// A PostgreSQL connection URL; shown without its password.
#[derive(Clone)]
pub struct PgUrl {
    config: postgres::Config,
    shown: String,
    tls: tls::Mode,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgUrl {
    pub fn parse(text: &str) -> Result<PgUrl, StoreError> {
        let (text, tls) = tls::Mode::split_from(text)?;
        let mut config = postgres::Config::from_str(&text)
            .map_err(|e| StoreError::Other(format!("invalid PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("kimi-proxy");
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "postgres://{}@{host}:{port}/{}",
            config.get_user().unwrap_or(""),
            config.get_dbname().unwrap_or("")
        );
        Ok(PgUrl { config, shown, tls })
    }

    /// Whether the URL's `options` set `synchronous_commit` itself.
    fn sets_synchronous_commit(&self) -> bool {
        self.config
            .get_options()
            .is_some_and(|o| o.contains("synchronous_commit"))
    }

    pub(crate) fn connect(&self) -> Result<postgres::Client, StoreError> {
        let connected = match self.tls.connector()? {
            Some(tls) => self.config.connect(tls),
            None => self.config.connect(postgres::NoTls),
        };
        connected.map_err(|source| StoreError::Connect {
            url: self.shown.clone(),
            source,
        })
    }
}

/// A PostgreSQL error as a person reads it: the server's own message (and detail), which the client's `Display`
/// reduces to "db error".
pub fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => error.to_string(),
    }
}

/// Whether a PostgreSQL error means the server cannot be reached or written right now (down, restarting, the
/// connection lost, out of resources): the writer holds records and retries, as for a full disk.
pub fn unavailable(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>()) {
        return true;
    }
    error.code().is_some_and(|code| {
        let code = code.code();
        // 08: connection exception; 53: insufficient resources; 57P01-03: shutdown, crash, not accepting yet.
        code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
    })
}

/// The write side on PostgreSQL: one connection, owned by the writer thread.
pub struct PgStore {
    client: postgres::Client,
    statements: PgStatements,
}

impl PgStore {
    /// Connects and creates or upgrades the schema; a database written by a newer version is refused.
    pub fn open(url: &PgUrl) -> Result<PgStore, StoreError> {
        let mut client = url.connect()?;
        migrate(&mut client, url)?;
        if !url.sets_synchronous_commit() {
            // The writer's commits are as durable as SQLite's in WAL mode with `synchronous = NORMAL`: a crash
            // of the server may lose the last committed batches (WAL flushed by the server within
            // 3 × wal_writer_delay, 600 ms by default), never a part of one, and never corrupts anything
            // (https://www.postgresql.org/docs/current/wal-async-commit.html). Waiting for the WAL flush of every
            // batch took 39 % of the writer's time in its benchmark. A URL that sets it
            // (`?options=-c%20synchronous_commit%3Don`) is left as it says.
            client.batch_execute("SET synchronous_commit TO off")?;
        }
        Ok(PgStore {
            client,
            statements: PgStatements::default(),
        })
    }

    /// [`super::Store::write_batch`] on PostgreSQL: one transaction, multi-row inserts.
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
        let mut tx = self.client.transaction()?;
        let written = {
            let db = Pg::new(&mut tx, &mut self.statements);
            write_records(&db, records, resolver, PG_CHUNK)?
        };
        // Every record of a process carries the same instance id (none in tests and benchmarks).
        if let Some(instance) = records.first().and_then(|r| r.instance.as_deref()) {
            super::fleet::notify_batch(&mut tx, instance, records.len())?;
        }
        tx.commit()?;
        Ok(written.committed(resolver))
    }

    /// Runs `f` in one transaction, committed when it succeeds.
    pub(crate) fn transact<T>(
        &mut self,
        f: impl FnOnce(&dyn Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tx = self.client.transaction()?;
        let value = {
            let db = Pg::new(&mut tx, &mut self.statements);
            f(&db)?
        };
        tx.commit()?;
        Ok(value)
    }

    /// Runs shared statements outside a transaction (each its own).
    pub fn with<T>(
        &mut self,
        f: impl FnOnce(&dyn Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = Pg::new(&mut self.client, &mut self.statements);
        f(&db)
    }
}

/// The tables and indexes of [`PG_BASELINE`], as PostgreSQL DDL: SQLite's schema at that version, translated.
pub fn baseline_ddl() -> Result<Vec<String>, StoreError> {
    let mut tables = PG_TABLES.to_vec();
    tables.extend_from_slice(PG_LEDGER_TABLES);
    baseline_ddl_of(&tables)
}

/// The baseline DDL of `tables` (with their indexes).
fn baseline_ddl_of(tables: &[&str]) -> Result<Vec<String>, StoreError> {
    let conn = rusqlite::Connection::open_in_memory()?;
    for migration in schema::MIGRATIONS.iter().take(PG_BASELINE as usize) {
        conn.execute_batch(migration)?;
    }
    let mut stmt = conn.prepare(
        "SELECT tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type = 'index', rowid",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (table, sql) = row?;
        if tables.contains(&table.as_str()) {
            out.push(pg_ddl(&sql));
        }
    }
    Ok(out)
}

fn migrate(client: &mut postgres::Client, url: &PgUrl) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    // `CREATE … IF NOT EXISTS` of an existing table sends a NOTICE, which the client logs: noise on every start
    // and on every store command (`sessions list --db postgres://…`).
    tx.batch_execute("SET LOCAL client_min_messages TO warning")?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let found: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?
        .try_get(0)?;
    if found > LATEST_VERSION {
        return Err(StoreError::TooNew {
            path: PathBuf::from(url.to_string()),
            found,
            supported: LATEST_VERSION,
        });
    }
    if found >= PG_BASELINE {
        // Created by a kimi-proxy whose PostgreSQL store had no ledger tables yet.
        let missing: bool = tx
            .query_one("SELECT to_regclass('usage_entries') IS NULL", &[])?
            .try_get(0)?;
        if missing {
            for statement in baseline_ddl_of(PG_LEDGER_TABLES)? {
                tx.batch_execute(&statement)?;
            }
            tracing::info!(url = %url, "PostgreSQL: the ledger import's tables created");
        }
    }
    if found == LATEST_VERSION {
        tx.commit()?;
        return Ok(());
    }
    let from = if found == 0 {
        for statement in baseline_ddl()? {
            tx.batch_execute(&statement)?;
        }
        PG_BASELINE
    } else if found < PG_BASELINE {
        return Err(StoreError::Other(format!(
            "the PostgreSQL database {url} has schema version {found}, older than any this kimi-proxy created"
        )));
    } else {
        found
    };
    for (version, migration) in schema::MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.batch_execute(&pg_ddl(migration)).map_err(|e| {
            StoreError::Other(format!(
                "upgrading {url} from schema version {version} to {}: {e}",
                version + 1
            ))
        })?;
    }
    tx.execute("DELETE FROM schema_version", &[])?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&LATEST_VERSION],
    )?;
    tx.commit()?;
    tracing::info!(url = %url, from = found, to = LATEST_VERSION, "PostgreSQL schema created or upgraded");
    Ok(())
}

/// A small pool of PostgreSQL connections for readers, each used by one blocking task at a time.
pub struct PgReaders {
    url: PgUrl,
    idle: Mutex<Vec<(postgres::Client, PgStatements)>>,
}

const IDLE_READERS: usize = 4;

impl PgReaders {
    pub fn new(url: &PgUrl) -> PgReaders {
        PgReaders {
            url: url.clone(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a connection (blocking); a connection that saw an error is not reused.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&dyn Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().pop();
        let (mut client, mut statements) = match pooled {
            Some(pair) => pair,
            None => (self.url.connect()?, PgStatements::default()),
        };
        let result = {
            let db = Pg::new(&mut client, &mut statements);
            f(&db)
        };
        if result.is_ok() {
            let mut idle = self.idle.lock();
            if idle.len() < IDLE_READERS {
                idle.push((client, statements));
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_select_postgresql_and_never_show_the_password() {
        let location = Location::parse("postgres://kimi:s3cret@db.internal:5433/kimi").unwrap();
        assert!(location.is_postgres());
        assert_eq!(
            location.to_string(),
            "postgres://kimi@db.internal:5433/kimi"
        );
        assert!(!format!("{location:?}").contains("s3cret"));
        assert!(
            !Location::parse("/var/lib/kimi-proxy.db")
                .unwrap()
                .is_postgres()
        );
        assert!(Location::parse("postgres://h:notaport/db").is_err());
    }

    #[test]
    fn the_baseline_schema_translates_the_core_tables() {
        let ddl = baseline_ddl().unwrap().join(";\n");
        for table in PG_TABLES {
            assert!(
                ddl.contains(&format!("CREATE TABLE {table} "))
                    || ddl.contains(&format!("CREATE TABLE \"{table}\"")),
                "{table}: {ddl}"
            );
        }
        assert!(ddl.contains("CREATE TABLE usage_entries "), "{ddl}");
        assert!(ddl.contains("\"offset\" "), "{ddl}");
        assert!(!ddl.contains(" INTEGER"), "{ddl}");
        assert!(!ddl.contains("REAL"), "{ddl}");
    }
}
