//! `kimi-proxy import` and `kimi-proxy report`: the usage coding agents record on disk (read by `kimi-ledgers`),
//! priced from the catalog and kept in the store beside the proxied traffic, and reports over both.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use kimi_ledgers::{Agent, UsageEntry};
use serde_json::json;

use crate::config::{Config, Prices};
use crate::store::StoreError;
use crate::store::db::Db;
use crate::store::ledgers::{
    ImportOutcome, LedgerStore, PricedEntry, UsageFilter, UsageRow, usage_rows,
};
use crate::store::pg::{Location, PgStore};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
}

/// Entries written per transaction.
const BATCH: usize = 8_192;

/// Anthropic's cache-write prices relative to input: 1.25x for 5 minutes, 2x for one hour.
const CACHE_WRITE_5M: f64 = 1.25;
const CACHE_WRITE_1H: f64 = 2.0;

/// Prices an entry's model from the catalog: by catalog key, upstream id, or the same name without a date
/// suffix (`claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`) and with `.` as `-`.
pub struct Pricer {
    by_name: HashMap<String, (Prices, bool)>,
    cache: HashMap<String, Option<(Prices, bool)>>,
}

fn normalize(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    let mut base = base.replace('.', "-");
    if let Some((head, tail)) = base.rsplit_once('-')
        && ((tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_digit())) || tail == "latest")
    {
        base = head.to_string();
    }
    base
}

impl Pricer {
    pub fn new(config: &Config) -> Pricer {
        let mut by_name = HashMap::new();
        for model in config.models.values() {
            let anthropic = model.provider == "anthropic";
            // Direct providers first: a key seen again (an aggregator's copy) does not replace them.
            for name in [&model.key, &model.upstream_id] {
                by_name
                    .entry(normalize(name))
                    .and_modify(|v: &mut (Prices, bool)| {
                        if anthropic || model.provider == "openai" {
                            *v = (model.prices, anthropic);
                        }
                    })
                    .or_insert((model.prices, anthropic));
            }
        }
        Pricer {
            by_name,
            cache: HashMap::new(),
        }
    }

    fn lookup(&mut self, model: &str) -> Option<(Prices, bool)> {
        if let Some(hit) = self.cache.get(model) {
            return *hit;
        }
        let found = self
            .by_name
            .get(&normalize(model))
            .copied()
            .map(|(p, a)| (p, a || model.starts_with("claude")));
        self.cache.insert(model.to_string(), found);
        found
    }

    /// The entry's cost from the catalog, or (estimated) the agent's own or zero when the model has no price.
    pub fn price(&mut self, entry: UsageEntry) -> PricedEntry {
        let found = entry.model.as_deref().and_then(|m| self.lookup(m));
        let (cost_usd, cost_estimated) = match found {
            Some((p, anthropic)) if p.input > 0.0 || p.output > 0.0 => {
                let (w5, w1) = if anthropic {
                    (CACHE_WRITE_5M, CACHE_WRITE_1H)
                } else {
                    (1.0, 1.0)
                };
                let one_hour = entry
                    .cache_creation_1h_tokens
                    .min(entry.cache_creation_tokens);
                let five_min = entry.cache_creation_tokens - one_hour;
                let cost = (entry.input_tokens as f64 * p.input
                    + entry.cache_read_tokens as f64 * p.cached_input
                    + five_min as f64 * p.input * w5
                    + one_hour as f64 * p.input * w1
                    + entry.output_tokens as f64 * p.output)
                    / 1_000_000.0;
                (cost, false)
            }
            _ => (entry.agent_cost_usd.unwrap_or(0.0), true),
        };
        PricedEntry {
            entry,
            cost_usd,
            cost_estimated,
        }
    }
}

/// Token and cost sums.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cache_read_tokens: i64,
    pub total_tokens: i64,
    pub cost_usd: f64,
    /// The costs the agents recorded themselves, where they did.
    pub agent_cost_usd: f64,
}

impl Totals {
    fn add(
        &mut self,
        input: i64,
        output: i64,
        creation: i64,
        read: i64,
        cost: f64,
        agent: Option<f64>,
    ) {
        self.requests += 1;
        self.input_tokens += input;
        self.output_tokens += output;
        self.cache_creation_tokens += creation;
        self.cache_read_tokens += read;
        self.total_tokens += input + output + creation + read;
        self.cost_usd += cost;
        self.agent_cost_usd += agent.unwrap_or(0.0);
    }

    fn add_entry(&mut self, p: &PricedEntry) {
        let e = &p.entry;
        self.add(
            e.input_tokens as i64,
            e.output_tokens as i64,
            e.cache_creation_tokens as i64,
            e.cache_read_tokens as i64,
            p.cost_usd,
            e.agent_cost_usd,
        );
    }

    fn add_row(&mut self, r: &UsageRow) {
        self.add(
            r.input_tokens,
            r.output_tokens,
            r.cache_creation_tokens,
            r.cache_read_tokens,
            r.cost_usd,
            r.agent_cost_usd,
        );
    }
}

/// What an import did, per agent.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportSummary {
    pub source: String,
    pub files: u64,
    pub bytes: u64,
    /// Entries read from the files this time (from where the last import stopped).
    pub entries_read: u64,
    pub imported: u64,
    pub already_known: u64,
    pub updated: u64,
    /// Entries the proxy had served itself: kept, linked, counted once.
    pub served_by_proxy: u64,
    pub malformed: u64,
    /// Bytes after the last complete line of files being written, left for the next import.
    pub pending_bytes: u64,
    pub files_failed: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Of the entries read.
    pub totals: Totals,
}

/// Imports what `agent` recorded under `roots` (its default places when empty) that the store does not have yet.
pub fn import_agent(
    store: &mut LedgerStore,
    pricer: &mut Pricer,
    agent: Agent,
    roots: &[PathBuf],
) -> Result<ImportSummary, LedgerError> {
    let roots = if roots.is_empty() {
        kimi_ledgers::default_roots(agent, &kimi_ledgers::ProcessEnv)
    } else {
        roots.to_vec()
    };
    let mut summary = ImportSummary {
        source: agent.name().to_string(),
        ..ImportSummary::default()
    };
    for file in kimi_ledgers::record_files(agent, &roots) {
        summary.files += 1;
        if let Err(error) = import_file(store, pricer, agent, &file, &mut summary) {
            match error {
                LedgerError::Io(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "cannot read an agent's record file");
                    summary.files_failed += 1;
                }
                other => return Err(other),
            }
        }
    }
    Ok(summary)
}

/// Imports one file from where the last import of it stopped.
pub fn import_file(
    store: &mut LedgerStore,
    pricer: &mut Pricer,
    agent: Agent,
    file: &Path,
    summary: &mut ImportSummary,
) -> Result<ImportOutcome, LedgerError> {
    let source = agent.name();
    let key = file.to_string_lossy().into_owned();
    let cursor = store.cursor(source, &key)?.unwrap_or_default();
    let replace = !agent.append_only();
    let mut batch: Vec<PricedEntry> = Vec::with_capacity(BATCH);
    let mut outcome = ImportOutcome::default();
    let mut failed: Option<StoreError> = None;
    let read = kimi_ledgers::read_file(agent, file, &cursor, &mut |entry| {
        if failed.is_some() {
            return;
        }
        let priced = pricer.price(entry);
        summary.entries_read += 1;
        summary.totals.add_entry(&priced);
        let ts = priced.entry.timestamp_ms;
        summary.first_ms = Some(summary.first_ms.map_or(ts, |f| f.min(ts)));
        summary.last_ms = Some(summary.last_ms.map_or(ts, |l| l.max(ts)));
        batch.push(priced);
        if batch.len() >= BATCH {
            match store.import_batch(source, &key, None, &batch, replace) {
                Ok(o) => outcome.add(o),
                Err(e) => failed = Some(e),
            }
            batch.clear();
        }
    })?;
    if let Some(error) = failed {
        return Err(error.into());
    }
    outcome.add(store.import_batch(source, &key, Some(&read.cursor), &batch, replace)?);
    summary.bytes += read.bytes;
    summary.malformed += read.malformed;
    summary.pending_bytes += read.pending_bytes;
    summary.imported += outcome.imported;
    summary.already_known += outcome.known;
    summary.updated += outcome.updated;
    summary.served_by_proxy += outcome.proxied;
    Ok(outcome)
}

/// The agents a command names: one, or `all`.
pub fn agents_named(name: &str) -> Result<Vec<Agent>, LedgerError> {
    if name == "all" {
        return Ok(Agent::ALL.to_vec());
    }
    Agent::from_name(name).map(|a| vec![a]).ok_or_else(|| {
        LedgerError::Usage(format!(
            "unknown agent `{name}` (claude-code, codex, cline, continue, kimi-cli or all)"
        ))
    })
}

/// `kimi-proxy import`: imports and prints what it did.
pub fn run_import(
    db: &Location,
    config: &Config,
    agent: &str,
    paths: &[PathBuf],
    json_output: bool,
    out: &mut dyn Write,
) -> Result<(), LedgerError> {
    let agents = agents_named(agent)?;
    if let Location::Sqlite(path) = db
        && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)?;
    }
    let mut store = LedgerStore::open(db)?;
    let mut pricer = Pricer::new(config);
    let mut summaries = Vec::new();
    for agent in agents {
        summaries.push(import_agent(&mut store, &mut pricer, agent, paths)?);
    }
    if json_output {
        writeln!(out, "{}", json!({ "sources": summaries }))?;
        return Ok(());
    }
    for s in &summaries {
        writeln!(
            out,
            "{}: {} files ({}), {} entries read: {} imported, {} already known, {} updated, {} served by the proxy (counted once), {} malformed skipped",
            s.source,
            s.files,
            human_bytes(s.bytes),
            s.entries_read,
            s.imported,
            s.already_known,
            s.updated,
            s.served_by_proxy,
            s.malformed
        )?;
        if s.pending_bytes > 0 {
            writeln!(
                out,
                "  {} bytes after the last complete line left for the next import (a file being written)",
                s.pending_bytes
            )?;
        }
        if let (Some(first), Some(last)) = (s.first_ms, s.last_ms) {
            writeln!(out, "  span {} → {} (UTC)", utc(first), utc(last))?;
        }
        let t = &s.totals;
        if t.requests > 0 {
            writeln!(
                out,
                "  input {}  output {}  cache write {}  cache read {}  total {}  cost ${:.4}  (agents' own ${:.4})",
                group(t.input_tokens),
                group(t.output_tokens),
                group(t.cache_creation_tokens),
                group(t.cache_read_tokens),
                group(t.total_tokens),
                t.cost_usd,
                t.agent_cost_usd
            )?;
        }
    }
    Ok(())
}

fn utc(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// How a report groups usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Daily,
    Weekly,
    Monthly,
    Session,
    Project,
    /// Per agent (and `proxy`): the totals of each source.
    Source,
}

impl Period {
    pub fn parse(name: &str) -> Result<Period, LedgerError> {
        Ok(match name {
            "daily" => Period::Daily,
            "weekly" => Period::Weekly,
            "monthly" => Period::Monthly,
            "session" => Period::Session,
            "project" => Period::Project,
            "source" => Period::Source,
            other => {
                return Err(LedgerError::Usage(format!(
                    "unknown report `{other}` (daily, weekly, monthly, session, project or source)"
                )));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Session => "session",
            Period::Project => "project",
            Period::Source => "source",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Period::Daily => "date",
            Period::Weekly => "week",
            Period::Monthly => "month",
            Period::Session => "session",
            Period::Project => "project",
            Period::Source => "source",
        }
    }
}

/// A report's options.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub period: Period,
    /// First day (in the time zone), inclusive.
    pub since: Option<Date>,
    /// Last day (in the time zone), inclusive.
    pub until: Option<Date>,
    /// IANA name; `None` is the system's.
    pub timezone: Option<String>,
    pub source: Option<String>,
    pub project: Option<String>,
    pub breakdown: bool,
}

/// One row of a report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReportRow {
    pub key: String,
    #[serde(flatten)]
    pub totals: Totals,
    pub sources: BTreeSet<String>,
    pub models: BTreeSet<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_breakdown: BTreeMap<String, Totals>,
}

/// A report: rows in order, their totals, and the time zone its days are in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub period: &'static str,
    pub timezone: String,
    pub rows: Vec<ReportRow>,
    pub totals: Totals,
}

pub fn parse_date(text: &str) -> Result<Date, LedgerError> {
    let compact = text.replace('-', "");
    if compact.len() == 8 && compact.bytes().all(|b| b.is_ascii_digit()) {
        let (y, rest) = compact.split_at(4);
        let (m, d) = rest.split_at(2);
        let parse = |s: &str| s.parse::<i16>().ok();
        if let (Some(y), Some(m), Some(d)) = (parse(y), parse(m), parse(d))
            && let Ok(date) = Date::new(y, m as i8, d as i8)
        {
            return Ok(date);
        }
    }
    Err(LedgerError::Usage(format!(
        "`{text}` is not a date (YYYY-MM-DD or YYYYMMDD)"
    )))
}

fn time_zone(name: Option<&str>) -> Result<TimeZone, LedgerError> {
    match name {
        None => Ok(TimeZone::system()),
        Some(name) => TimeZone::get(name)
            .map_err(|e| LedgerError::Usage(format!("unknown time zone `{name}`: {e}"))),
    }
}

fn day_start_ms(date: Date, tz: &TimeZone) -> Result<i64, LedgerError> {
    date.to_zoned(tz.clone())
        .map(|z| z.timestamp().as_millisecond())
        .map_err(|e| LedgerError::Usage(format!("{date}: {e}")))
}

/// Builds a report from the store.
pub fn build_report(db: &dyn Db, options: &ReportOptions) -> Result<Report, LedgerError> {
    let tz = time_zone(options.timezone.as_deref())?;
    let mut filter = UsageFilter {
        source: options.source.clone(),
        project: options.project.clone(),
        ..UsageFilter::default()
    };
    if let Some(since) = options.since {
        filter.since_ms = Some(day_start_ms(since, &tz)?);
    }
    if let Some(until) = options.until {
        let next = until
            .tomorrow()
            .map_err(|e| LedgerError::Usage(format!("{until}: {e}")))?;
        filter.until_ms = Some(day_start_ms(next, &tz)?);
    }
    let period = options.period;
    let mut rows: BTreeMap<String, ReportRow> = BTreeMap::new();
    let mut totals = Totals::default();
    usage_rows(db, &filter, &mut |r| {
        let key = match period {
            Period::Session => format!("{}/{}", r.source, r.session.as_deref().unwrap_or("-")),
            Period::Project => r.project.clone().unwrap_or_else(|| "(none)".to_string()),
            Period::Source => r.source.clone(),
            _ => {
                let date = jiff::Timestamp::from_millisecond(r.timestamp_ms)
                    .map(|t| t.to_zoned(tz.clone()).date())
                    .unwrap_or(Date::constant(1970, 1, 1));
                match period {
                    Period::Daily => date.to_string(),
                    Period::Monthly => format!("{:04}-{:02}", date.year(), date.month()),
                    _ => {
                        // Weeks start on Monday; the row is named by that day.
                        let back = i64::from(date.weekday().to_monday_zero_offset());
                        date.checked_sub(jiff::Span::new().days(back))
                            .unwrap_or(date)
                            .to_string()
                    }
                }
            }
        };
        let row = rows.entry(key.clone()).or_insert_with(|| ReportRow {
            key,
            ..ReportRow::default()
        });
        row.totals.add_row(&r);
        row.sources.insert(r.source.clone());
        row.models.insert(r.model.clone());
        if options.breakdown {
            row.model_breakdown
                .entry(r.model.clone())
                .or_default()
                .add_row(&r);
        }
        totals.add_row(&r);
    })?;
    Ok(Report {
        period: period.name(),
        timezone: tz
            .iana_name()
            .map(str::to_string)
            .unwrap_or_else(|| "local".to_string()),
        rows: rows.into_values().collect(),
        totals,
    })
}

/// `kimi-proxy report`.
pub fn run_report(
    db: &Location,
    options: &ReportOptions,
    json_output: bool,
    out: &mut dyn Write,
) -> Result<(), LedgerError> {
    let report = match db {
        Location::Sqlite(path) => build_report(&crate::store::cli::reader(path)?, options)?,
        // Opened as the writer opens it: a database no proxy has written yet gets its schema (as an outdated
        // SQLite file is upgraded by `cli::reader`).
        Location::Postgres(url) => PgStore::open(url)?.with(|conn| {
            build_report(conn, options).map_err(|e| match e {
                LedgerError::Store(s) => s,
                other => StoreError::Other(other.to_string()),
            })
        })?,
    };
    if json_output {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?
        )?;
        return Ok(());
    }
    write_table(&report, options.period, out)?;
    Ok(())
}

fn write_table(report: &Report, period: Period, out: &mut dyn Write) -> std::io::Result<()> {
    let what = match period {
        Period::Daily => "days",
        Period::Weekly => "weeks (from Monday)",
        Period::Monthly => "months",
        Period::Session | Period::Project | Period::Source => "times",
    };
    writeln!(
        out,
        "Usage by {}, {what} in time zone {}",
        period.column(),
        report.timezone
    )?;
    let header = [
        period.column(),
        "requests",
        "input",
        "output",
        "cache write",
        "cache read",
        "total",
        "cost (USD)",
        "sources",
        "models",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let line = |key: &str, t: &Totals, sources: String, models: String| {
        vec![
            key.to_string(),
            group(t.requests as i64),
            group(t.input_tokens),
            group(t.output_tokens),
            group(t.cache_creation_tokens),
            group(t.cache_read_tokens),
            group(t.total_tokens),
            format!("{:.2}", t.cost_usd),
            sources,
            models,
        ]
    };
    for row in &report.rows {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        table.push(line(
            &row.key,
            &row.totals,
            join(&row.sources),
            join(&row.models),
        ));
        for (model, t) in &row.model_breakdown {
            table.push(line(
                &format!("  └ {model}"),
                t,
                String::new(),
                String::new(),
            ));
        }
    }
    table.push(line("total", &report.totals, String::new(), String::new()));
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let last = table.len() - 1;
    for (i, row) in table.iter().enumerate() {
        if i == last {
            let rule: usize = widths.iter().sum::<usize>() + 2 * (columns - 1);
            writeln!(out, "{}", "─".repeat(rule))?;
        }
        let mut text = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            // Text columns to the left, numbers to the right.
            if c == 0 || c >= 8 {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            } else {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            }
            if c + 1 < columns {
                text.push_str("  ");
            }
        }
        writeln!(out, "{}", text.trim_end())?;
        if i == 0 {
            let rule: usize = widths.iter().sum::<usize>() + 2 * (columns - 1);
            writeln!(out, "{}", "─".repeat(rule))?;
        }
    }
    Ok(())
}

/// How often the followed directories are walked in full while inotify (or the platform's watcher) reports
/// changes: a safety net for missed events, and how new agent directories get watched.
const RESCAN: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest the follower sleeps before looking at the shutdown signal.
const WAKE: std::time::Duration = std::time::Duration::from_millis(250);

type Stamp = (u64, Option<std::time::SystemTime>);

/// Imports `file` when its length or modification time changed since it was last imported.
fn follow_file(
    store: &mut LedgerStore,
    pricer: &mut Pricer,
    agent: Agent,
    file: &Path,
    seen: &mut HashMap<PathBuf, Stamp>,
) {
    let Ok(meta) = std::fs::metadata(file) else {
        return;
    };
    let stamp = (meta.len(), meta.modified().ok());
    if seen.get(file) == Some(&stamp) {
        return;
    }
    let mut summary = ImportSummary::default();
    match import_file(store, pricer, agent, file, &mut summary) {
        Ok(outcome) => {
            seen.insert(file.to_path_buf(), stamp);
            if outcome.imported + outcome.updated > 0 {
                tracing::debug!(file = %file.display(), imported = outcome.imported, updated = outcome.updated, "imported an agent's new usage");
            }
        }
        Err(error) => {
            tracing::warn!(file = %file.display(), %error, "cannot import an agent's record file");
        }
    }
}

/// Follows the agents named in `[ledgers] follow` while `serve` runs: a thread that watches their directories
/// (inotify through `notify`; `[ledgers] watch = false` or a watcher that cannot start falls back to looking every
/// `poll_ms`, 500 ms by default) and imports what appeared or changed. A rotated or truncated file is read again
/// from its start; the entry keys keep that from counting twice. It writes through its own connection, as
/// `kimi-proxy import` does from another process. Stops when `shutdown` fires.
pub fn spawn_follower(
    config: &Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> Option<std::thread::JoinHandle<()>> {
    use notify::Watcher as _;

    let agents: Vec<Agent> = config
        .ledgers
        .follow
        .iter()
        .filter_map(|n| Agent::from_name(n))
        .collect();
    if agents.is_empty() || !config.store.enabled {
        return None;
    }
    let db = match &config.store.url {
        Some(url) => match Location::parse(url.expose()) {
            Ok(location) => location,
            Err(error) => {
                tracing::error!(%error, "cannot follow the agents' records");
                return None;
            }
        },
        None => Location::Sqlite(config.store.path.clone()?),
    };
    let poll = config.ledgers.poll;
    let use_watcher = config.ledgers.watch;
    let mut pricer = Pricer::new(config);
    let spawned = std::thread::Builder::new()
        .name("ledgers-follow".into())
        .spawn(move || {
            let mut store = match LedgerStore::open(&db) {
                Ok(store) => store,
                Err(error) => {
                    tracing::error!(%error, "cannot follow the agents' records");
                    return;
                }
            };
            let (tx, rx) = std::sync::mpsc::channel();
            let mut watcher = if use_watcher {
                match notify::recommended_watcher(tx) {
                    Ok(w) => Some(w),
                    Err(error) => {
                        tracing::warn!(%error, "cannot watch the agents' directories; looking every poll_ms instead");
                        None
                    }
                }
            } else {
                None
            };
            let mut watched: Vec<(Agent, PathBuf)> = Vec::new();
            let mut seen: HashMap<PathBuf, Stamp> = HashMap::new();
            let mut next_scan = std::time::Instant::now();
            tracing::info!(agents = ?agents.iter().map(|a| a.name()).collect::<Vec<_>>(), watching = watcher.is_some(), "following the agents' usage records");
            while !shutdown.is_cancelled() {
                let now = std::time::Instant::now();
                if now >= next_scan {
                    for &agent in &agents {
                        let roots = kimi_ledgers::default_roots(agent, &kimi_ledgers::ProcessEnv);
                        if let Some(w) = watcher.as_mut() {
                            for root in &roots {
                                if watched.iter().any(|(a, r)| *a == agent && r == root) {
                                    continue;
                                }
                                match w.watch(root, notify::RecursiveMode::Recursive) {
                                    Ok(()) => watched.push((agent, root.clone())),
                                    Err(error) => tracing::warn!(root = %root.display(), %error, "cannot watch"),
                                }
                            }
                        }
                        for file in kimi_ledgers::record_files(agent, &roots) {
                            follow_file(&mut store, &mut pricer, agent, &file, &mut seen);
                        }
                    }
                    next_scan = now + if watcher.is_some() { RESCAN } else { poll };
                }
                let wait = next_scan
                    .saturating_duration_since(std::time::Instant::now())
                    .min(WAKE);
                if watcher.is_none() {
                    std::thread::sleep(wait);
                    continue;
                }
                let first = match rx.recv_timeout(wait) {
                    Ok(event) => event,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        watcher = None;
                        continue;
                    }
                };
                let mut changed: Vec<PathBuf> = Vec::new();
                for event in std::iter::once(first).chain(rx.try_iter()) {
                    match event {
                        Ok(event) => changed.extend(event.paths),
                        // Events were lost (queue overflow): look at everything.
                        Err(_) => next_scan = std::time::Instant::now(),
                    }
                }
                changed.sort();
                changed.dedup();
                for path in changed {
                    if let Some((agent, _)) = watched
                        .iter()
                        .find(|(a, root)| path.starts_with(root) && a.is_record_file(&path))
                    {
                        follow_file(&mut store, &mut pricer, *agent, &path, &mut seen);
                    }
                }
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::error!(%error, "cannot start the ledgers follower");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn model_names_normalize_to_catalog_names() {
        assert_eq!(normalize("claude-sonnet-4-5-20250929"), "claude-sonnet-4-5");
        assert_eq!(
            normalize("anthropic/claude-sonnet-4.5"),
            "claude-sonnet-4-5"
        );
        assert_eq!(normalize("gpt-5-codex"), "gpt-5-codex");
    }

    #[test]
    fn dates_parse_both_ways() {
        assert_eq!(
            parse_date("2025-01-02").unwrap(),
            Date::new(2025, 1, 2).unwrap()
        );
        assert_eq!(
            parse_date("20250102").unwrap(),
            Date::new(2025, 1, 2).unwrap()
        );
        assert!(parse_date("2025-13-02").is_err());
    }
}
