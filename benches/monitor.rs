//! What monitoring costs on the request path, with it on and off in one run: the histogram records and
//! counters a finished request makes (`Monitor::record_request`), the inter-chunk gap a streamed frame records,
//! and the upstream-429 counter, against doing nothing with the same record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use kimi_proxy::accounting::RequestRecord;
use kimi_proxy::monitor::{Metric, Monitor};

#[path = "support/mod.rs"]
mod support;
use support::agent_turn;

fn monitoring(c: &mut Criterion) {
    let mut group = c.benchmark_group("monitor");
    let monitor = Monitor::new();
    let throttled = AtomicU64::new(0);
    // Eight provider/model labels in rotation, as a proxy serving several models sees them.
    let records: Vec<RequestRecord> = (0..8)
        .map(|i| {
            let mut r = agent_turn(i);
            r.model = format!("moonshot/kimi-k2.{i}");
            r.latency_us = 1_000 + i * 7_919;
            r
        })
        .collect();
    let mut i = 0usize;
    group.bench_function("request_off", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&records[i % records.len()]);
        })
    });
    group.bench_function("request_on", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let record = black_box(&records[i % records.len()]);
            monitor.record_request(&record.sample());
            // What a 429 costs the alert rule (only 429s pay it; counted here for every request).
            throttled.fetch_add(1, Ordering::Relaxed);
        })
    });
    let mut gap = 0u64;
    group.bench_function("frame_off", |b| {
        b.iter(|| {
            gap = gap.wrapping_add(37) % 50_000;
            black_box(gap);
        })
    });
    group.bench_function("frame_on", |b| {
        b.iter(|| {
            gap = gap.wrapping_add(37) % 50_000;
            monitor.record(Metric::InterChunkGap, black_box(gap));
        })
    });
    group.finish();
}

criterion_group!(benches, monitoring);
criterion_main!(benches);
