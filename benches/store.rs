//! Store benchmarks: writer throughput (rows/s, conversation matching included), the cost of `offer()` on the
//! request path, and the session queries on a database of 1,000,000 requests (built once in a temp dir).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kimi_proxy::accounting::{RecordSink, RequestRecord};
use kimi_proxy::config::SessionMode;
use kimi_proxy::store::pg::{Location, PgStore};
use kimi_proxy::store::query::{self, Order, RequestFilter, SessionSort};
use kimi_proxy::store::sessions::SessionResolver;
use kimi_proxy::store::{Readers, Store, StoreSink, WriterOptions};

#[path = "support/mod.rs"]
mod support;
use support::agent_turn;

fn record(id: u64, hashes: Vec<u64>, client: Option<String>) -> Arc<RequestRecord> {
    Arc::new(RequestRecord {
        client_session: client,
        message_hashes: hashes,
        ..agent_turn(id)
    })
}

/// A realistic stream: 32 agents in parallel, each turn resending its history plus two messages; every 64
/// turns an agent starts a new task; one in eight requests carries a client id.
struct Traffic {
    next: u64,
    turns: Vec<u64>,
    task: Vec<u64>,
}

impl Traffic {
    fn new() -> Traffic {
        Traffic {
            next: 1,
            turns: vec![0; 32],
            task: (0..32).collect(),
        }
    }

    fn next(&mut self) -> Arc<RequestRecord> {
        let id = self.next;
        self.next += 1;
        let agent = (id % 32) as usize;
        if id.is_multiple_of(8) {
            return record(id, vec![id], Some(format!("client-{}", id % 100)));
        }
        self.turns[agent] += 1;
        if self.turns[agent] > 64 {
            self.turns[agent] = 1;
            self.task[agent] += 32;
        }
        let base = self.task[agent] << 20;
        let len = 2 * self.turns[agent] - 1;
        record(id, (base..base + len).collect(), None)
    }
}

fn resolver() -> SessionResolver {
    SessionResolver::new(
        SessionMode::Conversation,
        60,
        [("moonshot/kimi-k2.5".to_string(), 262_144)]
            .into_iter()
            .collect(),
    )
}

fn writer_throughput(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("writer");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    const BATCH: usize = 512;
    const ROWS: u64 = 20 * BATCH as u64;
    group.throughput(Throughput::Elements(ROWS));

    // The store alone: batches of 512 in one transaction each, sessions resolved.
    let mut store = Store::open(&dir.path().join("direct.db")).unwrap();
    let mut resolver = resolver();
    let mut traffic = Traffic::new();
    group.bench_function("write_batch_512", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let batches: Vec<Vec<Arc<RequestRecord>>> = (0..ROWS as usize / BATCH)
                    .map(|_| (0..BATCH).map(|_| traffic.next()).collect())
                    .collect();
                let started = Instant::now();
                for batch in &batches {
                    store.write_batch(batch, &mut resolver).unwrap();
                }
                spent += started.elapsed();
            }
            spent
        })
    });

    // End to end: offer() on one thread, the writer thread committing.
    let sink = StoreSink::start(
        &dir.path().join("sink.db"),
        WriterOptions {
            queue_capacity: 2 * ROWS as usize,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let mut traffic = Traffic::new();
    group.bench_function("sink_offer_to_commit", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let records: Vec<Arc<RequestRecord>> = (0..ROWS).map(|_| traffic.next()).collect();
                let started = Instant::now();
                for r in &records {
                    sink.offer(r);
                }
                sink.flush().unwrap();
                spent += started.elapsed();
            }
            spent
        })
    });
    let stats = sink.stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    sink.shutdown();

    // The same on PostgreSQL (`KIMI_BENCH_PG`, default the local server), side by side; skipped when unreachable.
    let server = std::env::var("KIMI_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("kp_bench_{}", std::process::id());
    let admin = postgres::Client::connect(&format!("{server}/postgres"), postgres::NoTls).and_then(
        |mut admin| {
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .map(|()| admin)
        },
    );
    match admin {
        Err(error) => {
            eprintln!("PostgreSQL benchmarks skipped: {server} cannot be reached: {error}")
        }
        Ok(mut admin) => {
            let location = Location::parse(&format!("{server}/{name}")).unwrap();
            let Location::Postgres(url) = &location else {
                panic!("not a PostgreSQL URL")
            };
            let mut store = PgStore::open(url).unwrap();
            let mut resolver = self::resolver();
            let mut traffic = Traffic::new();
            group.bench_function("write_batch_512_postgres", |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let batches: Vec<Vec<Arc<RequestRecord>>> = (0..ROWS as usize / BATCH)
                            .map(|_| (0..BATCH).map(|_| traffic.next()).collect())
                            .collect();
                        let started = Instant::now();
                        for batch in &batches {
                            store.write_batch(batch, &mut resolver).unwrap();
                        }
                        spent += started.elapsed();
                    }
                    spent
                })
            });
            drop(store);
            let sink = StoreSink::start_at(
                &location,
                WriterOptions {
                    queue_capacity: 2 * ROWS as usize,
                    ..WriterOptions::default()
                },
            )
            .unwrap();
            let mut traffic = Traffic::new();
            group.bench_function("sink_offer_to_commit_postgres", |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let records: Vec<Arc<RequestRecord>> =
                            (0..ROWS).map(|_| traffic.next()).collect();
                        let started = Instant::now();
                        for r in &records {
                            sink.offer(r);
                        }
                        sink.flush().unwrap();
                        spent += started.elapsed();
                    }
                    spent
                })
            });
            let stats = sink.stats();
            assert_eq!(stats.dropped, 0, "{stats:?}");
            sink.shutdown();
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
    group.finish();
}

fn offer_cost(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let sink = StoreSink::start(
        &dir.path().join("offer.db"),
        WriterOptions {
            queue_capacity: 100_000,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let mut traffic = Traffic::new();
    let records: Vec<Arc<RequestRecord>> = (0..1000).map(|_| traffic.next()).collect();
    c.bench_function("offer", |b| {
        // Measured in rounds of 1,000 offers; the writer drains between rounds (not timed) so every offer
        // takes the accepting path.
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(1000) as usize;
                let started = Instant::now();
                for r in &records[..n] {
                    sink.offer(black_box(r));
                }
                spent += started.elapsed();
                done += n as u64;
                sink.flush().unwrap();
            }
            spent
        })
    });
    let stats = sink.stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    sink.shutdown();
}

fn big_database_queries(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("million.db");
    let started = Instant::now();
    {
        let mut store = Store::open(&path).unwrap();
        let mut resolver = resolver();
        let mut traffic = Traffic::new();
        for _ in 0..(1_000_000 / 1000) {
            let batch: Vec<Arc<RequestRecord>> = (0..1000).map(|_| traffic.next()).collect();
            store.write_batch(&batch, &mut resolver).unwrap();
        }
        store
            .connection()
            .execute_batch("ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    let readers = Readers::new(&path);
    let (sessions, requests) = readers
        .with(|conn| {
            Ok((
                query::count_sessions(conn)?,
                conn.query_row("SELECT count(*) FROM requests", [], |r| r.get::<_, i64>(0))?,
            ))
        })
        .unwrap();
    eprintln!(
        "built {requests} requests in {sessions} sessions in {:.1?}",
        started.elapsed()
    );
    let busiest = readers
        .with(|conn| {
            Ok(
                query::list_sessions(conn, SessionSort::Requests, Order::Desc, 1, 0)?
                    .first()
                    .map(|s| s.id)
                    .unwrap_or(1),
            )
        })
        .unwrap();

    let mut group = c.benchmark_group("million_requests");
    group.bench_function("session_list_50_by_last_activity", |b| {
        b.iter(|| {
            readers
                .with(|conn| {
                    Ok((
                        query::list_sessions(conn, SessionSort::LastActivity, Order::Desc, 50, 0)?,
                        query::count_sessions(conn)?,
                    ))
                })
                .unwrap()
        })
    });
    group.bench_function("session_list_50_by_cost", |b| {
        b.iter(|| {
            readers
                .with(|conn| query::list_sessions(conn, SessionSort::Cost, Order::Desc, 50, 0))
                .unwrap()
        })
    });
    group.bench_function("session_stats", |b| {
        b.iter(|| {
            readers
                .with(|conn| query::get_session(conn, black_box(busiest)))
                .unwrap()
        })
    });
    group.bench_function("session_requests_page_100", |b| {
        let filter = RequestFilter {
            session: Some(busiest),
            ..RequestFilter::default()
        };
        b.iter(|| {
            readers
                .with(|conn| query::list_requests(conn, &filter, 100, 0))
                .unwrap()
        })
    });
    group.sample_size(10);
    group.bench_function("store_counts_full_scan", |b| {
        b.iter(|| {
            readers
                .with(|conn| query::store_counts(conn, Some(&path)))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, offer_cost, writer_throughput, big_database_queries);
criterion_main!(benches);
