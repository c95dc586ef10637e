//! Telemetry benchmarks: what tracing adds per request. `offer` is the whole cost on the request path (the
//! record handed to the bounded queue); `export` is the work off it per request — two spans built (the request
//! and its one upstream attempt), encoded as OTLP protobuf and posted in batches of 512 to a receiver on
//! loopback — measured as requests per second through the export task.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kimi_proxy::accounting::{RecordSink, RequestRecord, UpstreamAttempt};
use kimi_proxy::config::Config;

#[path = "support/mod.rs"]
mod support;
use support::agent_turn;

fn record(id: u64) -> Arc<RequestRecord> {
    Arc::new(RequestRecord {
        upstream_attempts: vec![UpstreamAttempt {
            offset_us: 150,
            duration_us: 40_000,
            status: Some(200),
            failure: None,
        }],
        finish_reason: Some("stop".into()),
        ..agent_turn(id)
    })
}

/// An OTLP/HTTP receiver that accepts every export; counts the bytes it got.
async fn receiver(bytes: Arc<AtomicU64>) -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let bytes = Arc::clone(&bytes);
            async move {
                bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bytes = Arc::new(AtomicU64::new(0));
    let endpoint = runtime.block_on(receiver(Arc::clone(&bytes)));
    let toml = format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\nexport_interval_ms = 5\n");
    let config = Config::from_sources(Some(("bench", &toml)), &|_: &str| None).unwrap();
    let (sink, _task) = {
        let _guard = runtime.enter();
        kimi_proxy::telemetry::start(&config, "bench:0".into())
            .unwrap()
            .unwrap()
    };
    let counters = Arc::clone(sink.counters());
    let settled = |offered: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Two spans a record.
            let done = (counters.exported.load(Ordering::Relaxed)
                + counters.dropped.load(Ordering::Relaxed)
                + counters.failed.load(Ordering::Relaxed))
                / 2;
            if done >= offered || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    };

    let mut group = c.benchmark_group("telemetry");
    group.throughput(Throughput::Elements(1));
    let records: Vec<Arc<RequestRecord>> = (0..512).map(record).collect();
    let mut offered = 0u64;
    group.bench_function("offer", |b| {
        let mut n = 0usize;
        b.iter(|| {
            sink.offer(&records[n % records.len()]);
            n += 1;
        });
        offered += n as u64;
    });
    settled(offered);

    group.bench_function("export", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(512);
                for record in &records[..chunk as usize] {
                    sink.offer(record);
                }
                offered += chunk;
                settled(offered);
                left -= chunk;
            }
            start.elapsed()
        });
    });
    group.finish();
    let exported = counters.exported.load(Ordering::Relaxed);
    println!(
        "spans exported {exported}, dropped {}, failed {}; {:.0} bytes per span on the wire",
        counters.dropped.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed) as f64 / exported.max(1) as f64
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
