//! What monitoring costs on the request path, with it on and off in one run: the histogram records and
//! counters a finished request makes (`Monitor::record_request`), the inter-chunk gap a streamed frame records,
//! and the upstream-429 counter, against doing nothing with the same record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use kimi_proxy::accounting::RequestRecord;
use kimi_proxy::monitor::{Metric, Monitor};

fn record(id: u64) -> RequestRecord {
    RequestRecord {
        id,
        started_at_ms: 1_700_000_000_000 + id as i64,
        model: "moonshot/kimi-k2.5".into(),
        provider: "moonshot".into(),
        upstream_model: "kimi-k2.5".into(),
        streaming: true,
        status: 200,
        error_kind: None,
        prompt_estimated: 12_000,
        prompt_calibrated: 12_100,
        calibration_ratio: Some(1.01),
        prompt_reported: Some(12_150),
        completion_estimated: 400,
        completion_reported: Some(410),
        cached_reported: Some(11_000),
        reasoning_estimated: 120,
        reasoning_reported: Some(118),
        prompt_tokens: 12_150,
        completion_tokens: 410,
        tokens_estimated: false,
        prompt_accuracy: Some(0.99),
        completion_accuracy: Some(0.97),
        tokenizer: "cl100k_base".into(),
        tokenizer_exact: false,
        prompt_breakdown: Default::default(),
        cost_usd: 0.0042,
        cost_estimated: false,
        counting_us: 35,
        latency_us: 2_400_000,
        ttft_us: Some(800_000),
        upstream_headers_us: Some(700_000),
        upstream_us: Some(699_000),
        overhead_us: Some(1_000),
        attempts: 1,
        tool_call_fixes: 0,
        usage_injected: true,
        cache_hit: false,
        virtual_key: None,
        context: None,
        tokens_saved: 0,
        cost_saved_usd: 0.0,
        finish_reason: Some("tool_calls".into()),
        response_bytes: 5_400,
        preview: Some("Refactor the session matcher so that parallel agents are told".into()),
        client_session: None,
        message_hashes: Vec::new(),
    }
}

fn monitoring(c: &mut Criterion) {
    let mut group = c.benchmark_group("monitor");
    let monitor = Monitor::new();
    let throttled = AtomicU64::new(0);
    // Eight provider/model labels in rotation, as a proxy serving several models sees them.
    let records: Vec<RequestRecord> = (0..8)
        .map(|i| {
            let mut r = record(i);
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
            monitor.record_request(record);
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
