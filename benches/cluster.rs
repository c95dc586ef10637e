//! What a provider budget shared through Redis (`[cluster] redis`) adds to a request when the instance's lease
//! (its local allowance) covers it, beside the local budget alone: criterion's mean per decision, then p50/p99
//! over 200,000 single decisions each. Needs the machine's Redis (`KIMI_BENCH_REDIS`, default 127.0.0.1:6379);
//! skipped, and said so, when it does not answer.
//!
//! The lease is refilled between timed rounds (untimed), so every timed decision is one the lease covers — the
//! case the target speaks of; a request that finds no lease waits for Redis (its round trip), which this does not
//! time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use kimi_proxy::config::{ClusterConfig, Secret};
use kimi_proxy::proxy::ratelimit::RateLimiter;
use kimi_proxy::proxy::shared_limit::{Acquire, RedisLink, SharedRate};

const RPM: u32 = 6_000_000;
const ALLOWANCE: u32 = 2_000;
/// Decisions timed per round: what a fresh lease covers without a refill.
const ROUND: u32 = ALLOWANCE / 2;

fn shared(runtime: &tokio::runtime::Runtime) -> Option<Arc<SharedRate>> {
    let addr = std::env::var("KIMI_BENCH_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into());
    if std::net::TcpStream::connect(&addr).is_err() {
        eprintln!("shared-budget benchmarks skipped: no Redis at {addr}");
        return None;
    }
    let cluster = ClusterConfig {
        redis: Some(Secret::new(format!("redis://{addr}"))),
        key_prefix: format!("kp-bench-{}", std::process::id()),
        local_allowance: ALLOWANCE,
        ..ClusterConfig::default()
    };
    let _guard = runtime.enter();
    let link = RedisLink::new(&cluster).unwrap()?;
    SharedRate::new(&link, "bench", RPM, ALLOWANCE, Duration::ZERO)
}

/// Waits (untimed) until the lease holds at least a round's worth.
fn refill(runtime: &tokio::runtime::Runtime, rate: &Arc<SharedRate>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rate.usage().leased < ROUND {
        // A decision taken when the lease is low starts the refill; it is not timed (the first one may find
        // the connection still being made: it is then decided locally).
        runtime.block_on(rate.acquire());
        std::thread::sleep(Duration::from_millis(2));
        assert!(Instant::now() < deadline, "no lease: {:?}", rate.usage());
    }
}

fn shared_budget(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let Some(rate) = shared(&runtime) else {
        return;
    };
    // A fresh local limiter per round, like the lease: its statistics keep each admission of the last minute.
    let fresh = || RateLimiter::new(Some(RPM), None, Duration::ZERO).unwrap();
    let mut group = c.benchmark_group("budget_decision");
    group.bench_function("local_only", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let local = fresh();
                let n = (iters - done).min(u64::from(ROUND));
                let started = Instant::now();
                for _ in 0..n {
                    local.reserve(tokio::time::Instant::now()).unwrap();
                }
                spent += started.elapsed();
                done += n;
            }
            spent
        })
    });
    group.bench_function("shared_from_lease", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                refill(&runtime, &rate);
                let n = (iters - done).min(u64::from(ROUND));
                let started = Instant::now();
                runtime.block_on(async {
                    for _ in 0..n {
                        assert_eq!(rate.acquire().await, Acquire::Admitted);
                    }
                });
                spent += started.elapsed();
                done += n;
            }
            spent
        })
    });
    group.finish();

    // Percentiles of single decisions, side by side.
    let mut local_hist = Histogram::<u64>::new(3).unwrap();
    let mut shared_hist = Histogram::<u64>::new(3).unwrap();
    for _ in 0..200_000 / ROUND {
        refill(&runtime, &rate);
        let local = fresh();
        runtime.block_on(async {
            for _ in 0..ROUND {
                let started = Instant::now();
                assert_eq!(rate.acquire().await, Acquire::Admitted);
                shared_hist
                    .record(started.elapsed().as_nanos() as u64)
                    .unwrap();
                let started = Instant::now();
                local.reserve(tokio::time::Instant::now()).unwrap();
                local_hist
                    .record(started.elapsed().as_nanos() as u64)
                    .unwrap();
            }
        });
    }
    let usage = rate.usage();
    assert_eq!(usage.redis_failures, 0, "{usage:?}");
    eprintln!(
        "budget decision, ns: local p50 {} p99 {} | shared from the lease p50 {} p99 {} | added p99 {} ({} Redis calls)",
        local_hist.value_at_quantile(0.5),
        local_hist.value_at_quantile(0.99),
        shared_hist.value_at_quantile(0.5),
        shared_hist.value_at_quantile(0.99),
        shared_hist
            .value_at_quantile(0.99)
            .saturating_sub(local_hist.value_at_quantile(0.99)),
        usage.redis_calls,
    );
}

criterion_group!(benches, shared_budget);
criterion_main!(benches);
