//! The store-backends and instances scenarios (issue 17). store-backends: proxy throughput at c=50 with the
//! SQLite store vs the PostgreSQL store, and the writer's counters after every round so a store that falls
//! behind shows. instances: two proxies on one PostgreSQL database, the load spread over both, vs one of them
//! alone. Each scenario starts its own proxies against the run's mock, on a throwaway database created on the
//! `--pg` server (with `psql`) and dropped afterwards; the sides alternate round by round, each after a warm-up.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;

use crate::loadgen::{self, RunResult, Summary};
use crate::procs::{self, Binaries, Server};
use crate::report::fmt_us;
use crate::scenarios::{Endpoint, Settings, measure, round_order, throughput_spec};

/// The machine's PostgreSQL server (`--pg`): the scenarios create their database on it.
pub const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432";
/// The PostgreSQL store keeps at least this share of the SQLite store's throughput (c=50).
pub const TARGET_PG_SHARE: f64 = 0.9;

/// The store writer's counters (`writer` of `/api/stats/store`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterCounters {
    pub written: u64,
    pub dropped: u64,
    /// Waiting in the queue.
    pub queued: u64,
    /// Kept in memory while the database cannot be written.
    pub held: u64,
}

impl WriterCounters {
    /// From the body of `/api/stats/store`.
    pub fn parse(body: &[u8]) -> anyhow::Result<WriterCounters> {
        let stats: serde_json::Value = serde_json::from_slice(body)?;
        let writer = &stats["writer"];
        let n = |key: &str| {
            writer[key]
                .as_u64()
                .with_context(|| format!("/api/stats/store has no writer.{key}"))
        };
        Ok(WriterCounters {
            written: n("written")?,
            dropped: n("dropped")?,
            queued: n("queued")?,
            held: n("held")?,
        })
    }
}

/// The counters of the proxy at `addr`.
pub async fn writer_counters(addr: std::net::SocketAddr) -> anyhow::Result<WriterCounters> {
    let answer = loadgen::fetch(addr, "/api/stats/store", &[], None).await?;
    ensure!(
        answer.status == http::StatusCode::OK,
        "/api/stats/store answered {}",
        answer.status
    );
    WriterCounters::parse(&answer.body)
}

/// One proxy's counters after one round (`None`: they could not be read, the error is printed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundCounters {
    pub round: usize,
    /// The side just measured (the counters are read after it).
    pub side: String,
    pub proxy: String,
    pub counters: Option<WriterCounters>,
}

/// `SERVER/DB` for a PostgreSQL server URL without a database (`postgres://USER@HOST:PORT`).
pub fn database_url(server: &str, db: &str) -> anyhow::Result<String> {
    let Some(rest) = server
        .strip_prefix("postgres://")
        .or_else(|| server.strip_prefix("postgresql://"))
    else {
        bail!("--pg wants a PostgreSQL URL (postgres://USER@HOST:PORT), got `{server}`");
    };
    let rest = rest.trim_end_matches('/');
    ensure!(
        !rest.is_empty() && !rest.contains(['/', '?']),
        "--pg names the server only (postgres://USER@HOST:PORT, no database or options), got `{server}`"
    );
    Ok(format!("{}/{db}", server.trim_end_matches('/')))
}

/// A throwaway database on the PostgreSQL server, created with `psql` and dropped (`WITH (FORCE)`, PostgreSQL
/// 13+) when this goes out of scope.
pub struct ScratchDb {
    server: String,
    pub name: String,
    pub url: String,
}

impl ScratchDb {
    pub fn create(server: &str, scenario: &str) -> anyhow::Result<ScratchDb> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "kimi_bench_{}_{}_{nanos}",
            scenario.replace('-', "_"),
            std::process::id()
        );
        let url = database_url(server, &name)?;
        psql(server, &format!("CREATE DATABASE {name}"))?;
        eprintln!("kimi-bench: {scenario}: created the database {name}");
        Ok(ScratchDb {
            server: server.into(),
            name,
            url,
        })
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(err) = psql(&self.server, &sql) {
            eprintln!(
                "kimi-bench: cannot drop the database {}: {err:#}",
                self.name
            );
        }
    }
}

/// Runs one statement with `psql` on the server's `postgres` database.
fn psql(server: &str, sql: &str) -> anyhow::Result<()> {
    let output = Command::new("psql")
        .arg(database_url(server, "postgres")?)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("cannot run psql (the PostgreSQL client), which these scenarios need")?;
    ensure!(
        output.status.success(),
        "psql `{sql}` failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// One side of these scenarios: a name and the servers its load is spread over.
struct Side<'a> {
    name: String,
    servers: Vec<&'a Endpoint>,
    /// Read the servers' store counters after each round (proxies, not the mock).
    store: bool,
}

/// `settings.rounds` rounds of the throughput load per side, alternating (ABBA…); the counters of every proxy
/// of a side after each of its rounds.
async fn alternate_sides(
    label: &str,
    settings: &Settings,
    mock: &Endpoint,
    sides: &[Side<'_>],
    body: &Bytes,
) -> anyhow::Result<(Vec<RunResult>, Vec<RoundCounters>)> {
    let mut totals = Vec::with_capacity(sides.len());
    for _ in sides {
        totals.push(RunResult::empty()?);
    }
    let mut counters = Vec::new();
    let rounds = settings.rounds.max(1);
    for round in 0..rounds {
        for index in round_order(sides.len(), round) {
            let (Some(side), Some(total)) = (sides.get(index), totals.get_mut(index)) else {
                continue;
            };
            let spec = throughput_spec(settings, mock.addr, body);
            let at = (label, round, rounds, side.name.as_str());
            total.merge(&measure(at, &side.servers, mock.pid, spec).await?)?;
            for server in side.servers.iter().filter(|_| side.store) {
                let read = writer_counters(server.addr).await;
                if let Err(err) = &read {
                    eprintln!(
                        "kimi-bench: {label}: {}'s store counters: {err:#}",
                        server.name
                    );
                }
                counters.push(RoundCounters {
                    round,
                    side: side.name.clone(),
                    proxy: server.name.clone(),
                    counters: read.ok(),
                });
            }
        }
    }
    Ok((totals, counters))
}

/// Where the scenarios start their proxies.
pub struct Setup<'a> {
    pub binaries: &'a Binaries,
    pub mock: &'a Endpoint,
    pub scratch: &'a Path,
    pub log_dir: &'a Path,
}

impl Setup<'_> {
    async fn proxy(
        &self,
        plan: &ProxyPlan,
        db: Option<&str>,
        config: &str,
    ) -> anyhow::Result<Server> {
        let extra: Vec<&str> = db.map(|db| vec!["--db", db]).unwrap_or_default();
        procs::start_proxy(
            plan.name,
            &self.binaries.proxy,
            (self.scratch, self.log_dir, plan.file),
            config,
            &extra,
        )
        .await
    }
}

/// One instance's shared-budget counters (`/api/stats` → `rate_limits.mock.shared`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedCounters {
    pub admitted_from_lease: u64,
    pub admitted_after_wait: u64,
    pub refused: u64,
    pub redis_calls: u64,
    pub redis_failures: u64,
}

impl SharedCounters {
    /// From the body of `/api/stats`.
    pub fn parse(body: &[u8]) -> anyhow::Result<SharedCounters> {
        let stats: serde_json::Value = serde_json::from_slice(body)?;
        let shared = &stats["rate_limits"]["mock"]["shared"];
        let n = |key: &str| {
            shared[key]
                .as_u64()
                .with_context(|| format!("/api/stats has no rate_limits.mock.shared.{key}"))
        };
        Ok(SharedCounters {
            admitted_from_lease: n("admitted_from_lease")?,
            admitted_after_wait: n("admitted_after_wait")?,
            refused: n("refused")?,
            redis_calls: n("redis_calls")?,
            redis_failures: n("redis_failures")?,
        })
    }
}

async fn shared_counters(addr: std::net::SocketAddr) -> anyhow::Result<SharedCounters> {
    let answer = loadgen::fetch(addr, "/api/stats", &[], None).await?;
    ensure!(
        answer.status == http::StatusCode::OK,
        "/api/stats answered {}",
        answer.status
    );
    SharedCounters::parse(&answer.body)
}

/// One of a scenario's two proxies: its name, log/config file stem, side name, and whether it is on the
/// scenario's PostgreSQL database (else on its own SQLite file).
struct ProxyPlan {
    name: &'static str,
    file: &'static str,
    side: &'static str,
    on_pg: bool,
    /// Shares the mock's budget on `--redis` when one is given.
    shared_budget: bool,
}

/// What [`direct_and_two_proxies`] measured: direct, first proxy, third side; the writers' counters after each
/// round; each proxy's shared-budget counters at the end (when on Redis).
type Measured = (
    [RunResult; 3],
    Vec<RoundCounters>,
    Vec<(String, SharedCounters)>,
);

/// Starts `proxies` (one after the other: the second finds the schema the first created), then measures
/// direct, the first proxy alone and `third` (the second proxy alone, or both at once with `both`), and stops
/// them; the throwaway database lives until then.
async fn direct_and_two_proxies(
    label: &str,
    (settings, setup, body): (&Settings, &Setup<'_>, &Bytes),
    proxies: [ProxyPlan; 2],
    (third, both): (&'static str, bool),
) -> anyhow::Result<Measured> {
    let db = ScratchDb::create(&settings.pg, label)?;
    let mut servers = Vec::with_capacity(2);
    for plan in &proxies {
        let on = plan.on_pg.then_some(db.url.as_str());
        let config = match &settings.redis {
            Some(redis) if plan.shared_budget => {
                procs::shared_budget_config(setup.mock.addr, redis, &db.name)
            }
            _ => procs::proxy_config(setup.mock.addr, true),
        };
        servers.push(setup.proxy(plan, on, &config).await?);
    }
    let ends: Vec<Endpoint> = proxies
        .iter()
        .zip(&servers)
        .map(|(plan, server)| Endpoint::new(plan.side, server.addr, server.pid))
        .collect();
    let [first, second] = ends.as_slice() else {
        bail!("{label}: not two proxies");
    };
    let sides = [
        Side {
            name: "direct".into(),
            servers: vec![setup.mock],
            store: false,
        },
        Side {
            name: first.name.clone(),
            servers: vec![first],
            store: true,
        },
        Side {
            name: third.into(),
            servers: if both {
                vec![first, second]
            } else {
                vec![second]
            },
            store: true,
        },
    ];
    let measured = alternate_sides(label, settings, setup.mock, &sides, body).await;
    let mut shared = Vec::new();
    for (plan, end) in proxies.iter().zip(&ends) {
        if settings.redis.is_some() && plan.shared_budget {
            shared.push((end.name.clone(), shared_counters(end.addr).await?));
        }
    }
    for server in &mut servers {
        server.check_alive()?;
    }
    for server in servers {
        server.stop().await;
    }
    let (results, counters) = measured?;
    let results: [RunResult; 3] = results
        .try_into()
        .map_err(|_| anyhow::anyhow!("{label}: not three sides"))?;
    drop(db);
    Ok((results, counters, shared))
}

/// What the store-backends scenario measured.
#[derive(Clone, Debug)]
pub struct StoreBackends {
    pub direct: RunResult,
    pub sqlite: RunResult,
    pub postgres: RunResult,
    pub counters: Vec<RoundCounters>,
}

impl StoreBackends {
    /// PostgreSQL requests/s ÷ SQLite requests/s.
    pub fn pg_share(&self) -> Option<f64> {
        let sqlite = self.sqlite.rps();
        (sqlite > 0.0).then(|| self.postgres.rps() / sqlite)
    }

    /// No request error, and every writer's counters read with no record dropped.
    pub fn clean(&self) -> bool {
        let errors = self.direct.errors + self.sqlite.errors + self.postgres.errors;
        errors == 0
            && self
                .counters
                .iter()
                .all(|c| c.counters.is_some_and(|c| c.dropped == 0))
    }
}

pub async fn store_backends(
    settings: &Settings,
    setup: &Setup<'_>,
    body: &Bytes,
) -> anyhow::Result<StoreBackends> {
    let proxies = [
        ProxyPlan {
            name: "kimi-proxy (SQLite store)",
            file: "store-sqlite",
            side: "sqlite",
            on_pg: false,
            shared_budget: false,
        },
        ProxyPlan {
            name: "kimi-proxy (PostgreSQL store)",
            file: "store-postgres",
            side: "postgres",
            on_pg: true,
            shared_budget: false,
        },
    ];
    let at = (settings, setup, body);
    let measured = direct_and_two_proxies("store-backends", at, proxies, ("postgres", false));
    let ([direct, sqlite, postgres], counters, _) = measured.await?;
    Ok(StoreBackends {
        direct,
        sqlite,
        postgres,
        counters,
    })
}

/// What the instances scenario measured.
#[derive(Clone, Debug)]
pub struct Instances {
    pub direct: RunResult,
    pub one: RunResult,
    pub two: RunResult,
    pub counters: Vec<RoundCounters>,
    /// The instances shared the mock's budget on `--redis`.
    pub redis: bool,
    /// Each instance's shared-budget counters at the end (with `--redis`).
    pub shared: Vec<(String, SharedCounters)>,
}

impl Instances {
    /// Two instances' aggregate requests/s ÷ one instance's.
    pub fn two_over_one(&self) -> Option<f64> {
        let one = self.one.rps();
        (one > 0.0).then(|| self.two.rps() / one)
    }
}

pub async fn instances(
    settings: &Settings,
    setup: &Setup<'_>,
    body: &Bytes,
) -> anyhow::Result<Instances> {
    let proxies = [
        ProxyPlan {
            name: "kimi-proxy (instance A)",
            file: "instance-a",
            side: "A",
            on_pg: true,
            shared_budget: true,
        },
        ProxyPlan {
            name: "kimi-proxy (instance B)",
            file: "instance-b",
            side: "B",
            on_pg: true,
            shared_budget: true,
        },
    ];
    let at = (settings, setup, body);
    let measured = direct_and_two_proxies("instances", at, proxies, ("A+B", true));
    let ([direct, one, two], counters, shared) = measured.await?;
    Ok(Instances {
        direct,
        one,
        two,
        counters,
        redis: settings.redis.is_some(),
        shared,
    })
}

fn fmt_share(share: Option<f64>) -> String {
    share.map_or("n/a".into(), |s| format!("{:.1} %", s * 100.0))
}

fn side_row(out: &mut String, name: &str, result: &RunResult) {
    let latency = Summary::of(&result.latency);
    let _ = writeln!(
        out,
        "| {name} | {:.0} | {} | {} | {} |",
        result.rps(),
        fmt_us(latency.p50),
        fmt_us(latency.p99),
        result.errors + result.warmup_errors
    );
}

fn side_head(out: &mut String, concurrency: usize) {
    let _ = writeln!(
        out,
        "| side | requests/s (c={concurrency}) | p50 | p99 | errors |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
}

fn counters_table(out: &mut String, counters: &[RoundCounters]) {
    if counters.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nThe store writer's counters after each round (cumulative since the proxy started):\n"
    );
    let _ = writeln!(
        out,
        "| round | after side | proxy | written | dropped | queued | held |"
    );
    let _ = writeln!(out, "|---:|---|---|---:|---:|---:|---:|");
    for row in counters {
        match row.counters {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    row.round + 1,
                    row.side,
                    row.proxy,
                    c.written,
                    c.dropped,
                    c.queued,
                    c.held
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | unreadable | | | |",
                    row.round + 1,
                    row.side,
                    row.proxy
                );
            }
        }
    }
}

fn method(settings: &Settings) -> String {
    format!(
        "The usual non-streaming chat request, c={} closed loop, {} round{} per side alternating (ABBA…), each \
         {:.1} s after a {:.1} s warm-up that is not recorded. \"direct\" is the mock alone, for scale.",
        settings.throughput_concurrency,
        settings.rounds.max(1),
        if settings.rounds.max(1) == 1 { "" } else { "s" },
        settings.throughput_duration.as_secs_f64() / settings.rounds.max(1) as f64,
        settings.warmup.as_secs_f64(),
    )
}

pub fn render_store_backends(out: &mut String, settings: &Settings, results: &StoreBackends) {
    let _ = writeln!(out, "\n## Store backends: SQLite vs PostgreSQL\n");
    let _ = writeln!(
        out,
        "Two proxies, accounting and the store on, one writing to a SQLite file, the other to a fresh PostgreSQL \
         database on the `--pg` server. {}\n",
        method(settings)
    );
    side_head(out, settings.throughput_concurrency);
    side_row(out, "direct", &results.direct);
    side_row(out, "proxy, SQLite store", &results.sqlite);
    side_row(out, "proxy, PostgreSQL store", &results.postgres);
    let _ = writeln!(
        out,
        "\nPostgreSQL vs SQLite: {} of the throughput (target ≥ {:.0} %).",
        fmt_share(results.pg_share()),
        TARGET_PG_SHARE * 100.0
    );
    counters_table(out, &results.counters);
}

pub fn render_instances(out: &mut String, settings: &Settings, results: &Instances) {
    let _ = writeln!(
        out,
        "\n## Two instances on one PostgreSQL database vs one\n"
    );
    let _ = writeln!(
        out,
        "Two proxies (A and B) on one fresh PostgreSQL database, {r}. \"one\" is A alone at c={c}; \"two\" spreads the same c={c} over A and B at once (half the connections each) and counts \
         their aggregate. {m} On a machine with few cores the two instances compete with the mock and the load \
         generator for them: the aggregate shows what a second instance on the same machine adds, not how a \
         fleet scales.\n",
        c = settings.throughput_concurrency,
        m = method(settings),
        r = if results.redis {
            "sharing the mock provider's `requests_per_minute` on Redis (`[cluster] redis`, a budget of 10⁹ a \
             minute that nothing reaches, `local_allowance = 100`: a lease renewed every 50 or so requests)"
        } else {
            "`[cluster] redis` not set (each instance's budgets its own)"
        }
    );
    side_head(out, settings.throughput_concurrency);
    side_row(out, "direct", &results.direct);
    side_row(out, "one instance", &results.one);
    side_row(out, "two instances (aggregate)", &results.two);
    let _ = writeln!(
        out,
        "\nTwo instances vs one: {} of the throughput.",
        fmt_share(results.two_over_one())
    );
    counters_table(out, &results.counters);
    if !results.shared.is_empty() {
        let _ = writeln!(
            out,
            "\nThe shared budget's counters at the end (`/api/stats` → `rate_limits.mock.shared`):\n"
        );
        let _ = writeln!(
            out,
            "| instance | admitted from the lease | admitted after asking Redis | refused | Redis calls | Redis \
             failures |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for (name, c) in &results.shared {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} |",
                c.admitted_from_lease,
                c.admitted_after_wait,
                c.refused,
                c.redis_calls,
                c.redis_failures
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn database_urls_from_the_server_url() {
        assert_eq!(
            database_url(DEFAULT_PG, "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgresql://u:p@db:6432/", "y").unwrap(),
            "postgresql://u:p@db:6432/y"
        );
        assert!(database_url("postgres://h:5432/kimi", "x").is_err());
        assert!(database_url("postgres://h?sslmode=disable", "x").is_err());
        assert!(database_url("mysql://h", "x").is_err());
        assert!(database_url("postgres://", "x").is_err());
    }

    #[test]
    fn reads_the_writer_counters() {
        let body =
            br#"{"path":"postgres://h/db","writer":{"queued":3,"queued_bytes":10,"offered":20,
            "written":15,"dropped":2,"held":1,"healthy":true}}"#;
        assert_eq!(
            WriterCounters::parse(body).unwrap(),
            WriterCounters {
                written: 15,
                dropped: 2,
                queued: 3,
                held: 1
            }
        );
        assert!(WriterCounters::parse(br#"{"writer":{"written":1}}"#).is_err());
    }

    fn run(ok: u64, secs: u64, errors: u64) -> RunResult {
        let mut result = RunResult::empty().unwrap();
        result.ok = ok;
        result.errors = errors;
        result.elapsed = Duration::from_secs(secs);
        result.latency.record(1_000).unwrap();
        result
    }

    #[test]
    fn store_backends_report_the_share_and_the_counters() {
        let counters = |dropped| WriterCounters {
            written: 4_000,
            dropped,
            queued: 0,
            held: 0,
        };
        let mut results = StoreBackends {
            direct: run(30_000, 3, 0),
            sqlite: run(9_000, 3, 0),
            postgres: run(8_400, 3, 0),
            counters: vec![
                RoundCounters {
                    round: 0,
                    side: "sqlite".into(),
                    proxy: "sqlite".into(),
                    counters: Some(counters(0)),
                },
                RoundCounters {
                    round: 0,
                    side: "postgres".into(),
                    proxy: "postgres".into(),
                    counters: None,
                },
            ],
        };
        assert!((results.pg_share().unwrap() - 0.9333).abs() < 1e-3);
        assert!(!results.clean(), "unreadable counters are not clean");
        results.counters[1].counters = Some(counters(7));
        assert!(!results.clean(), "dropped records are not clean");
        results.counters[1].counters = Some(counters(0));
        assert!(results.clean());
        let mut out = String::new();
        render_store_backends(&mut out, &Settings::new(true), &results);
        assert!(
            out.contains("| proxy, PostgreSQL store | 2800 | 1.00 ms |"),
            "{out}"
        );
        assert!(out.contains("PostgreSQL vs SQLite: 93.3 % of the throughput (target ≥ 90 %)"));
        assert!(
            out.contains("| 1 | postgres | postgres | 4000 | 0 | 0 | 0 |"),
            "{out}"
        );
        assert!(out.contains("3 rounds per side"), "{out}");
    }

    #[test]
    fn instances_report_the_aggregate_against_one() {
        let results = Instances {
            direct: run(30_000, 3, 0),
            one: run(9_000, 3, 0),
            two: run(7_500, 3, 1),
            counters: vec![RoundCounters {
                round: 1,
                side: "A+B".into(),
                proxy: "B".into(),
                counters: None,
            }],
            redis: false,
            shared: Vec::new(),
        };
        let mut out = String::new();
        render_instances(&mut out, &Settings::new(true), &results);
        assert!(
            out.contains("| two instances (aggregate) | 2500 | 1.00 ms | 1.00 ms | 1 |"),
            "{out}"
        );
        assert!(
            out.contains("Two instances vs one: 83.3 % of the throughput."),
            "{out}"
        );
        assert!(out.contains("| 2 | A+B | B | unreadable | | | |"), "{out}");
        assert!(out.contains("`[cluster] redis` not set") && !out.contains("Redis calls"));
    }

    #[test]
    fn instances_on_redis_report_the_shared_budget() {
        let body = br#"{"rate_limits":{"mock":{"requests_per_minute":1000000000,"shared":{
            "redis":"redis://127.0.0.1:6379","local_allowance":100,"leased":40,"admitted_from_lease":9000,
            "admitted_after_wait":2,"refused":0,"redis_calls":181,"redis_failures":1,"redis_unavailable":0}}}}"#;
        let counters = SharedCounters::parse(body).unwrap();
        assert_eq!(counters.redis_calls, 181);
        assert!(SharedCounters::parse(br#"{"rate_limits":{"mock":{}}}"#).is_err());
        let results = Instances {
            direct: run(30_000, 3, 0),
            one: run(9_000, 3, 0),
            two: run(9_000, 3, 0),
            counters: Vec::new(),
            redis: true,
            shared: vec![("A".into(), counters)],
        };
        let mut out = String::new();
        render_instances(&mut out, &Settings::new(true), &results);
        assert!(
            out.contains("sharing the mock provider's `requests_per_minute` on Redis"),
            "{out}"
        );
        assert!(out.contains("| A | 9000 | 2 | 0 | 181 | 1 |"), "{out}");
    }
}
