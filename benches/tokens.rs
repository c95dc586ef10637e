//! Token accounting micro-benchmarks: encoder throughput on the parity corpus, chat counting per turn with and
//! without the message cache, the cost of one streamed delta, and SSE parsing.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kimi_proxy::tokens::Tokenizer;
use kimi_proxy::tokens::cache::MessageCache;
use kimi_proxy::tokens::chat::{count_layout, count_request};
use kimi_proxy::tokens::stream::{CompletionCounter, SseParser};
use serde_json::{Value, json};

fn corpus() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tokenizer/corpus.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|doc| doc["text"].as_str().map(str::to_string))
        .collect::<Vec<_>>()
        .join("\n")
}

fn throughput(c: &mut Criterion) {
    // Start-up: the vocabularies are decoded on first use (once per process, so timed once, not sampled).
    for tokenizer in [Tokenizer::cl100k_base(), Tokenizer::o200k_base()] {
        let started = std::time::Instant::now();
        tokenizer.count("first use");
        eprintln!(
            "{} initialisation: {:?}",
            tokenizer.name(),
            started.elapsed()
        );
    }
    let text = corpus();
    let mut group = c.benchmark_group("count_corpus");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for tokenizer in [Tokenizer::cl100k_base(), Tokenizer::o200k_base()] {
        tokenizer.count("warm");
        group.bench_with_input(
            BenchmarkId::from_parameter(tokenizer.name()),
            &text,
            |b, text| b.iter(|| tokenizer.count(black_box(text))),
        );
    }
    group.finish();
}

/// A 100-turn agent conversation of about 100k tokens: user asks, assistant answers with a tool call, the tool
/// returns a bulky result.
fn conversation(turns: usize) -> Vec<Value> {
    let text = corpus();
    let mut messages =
        vec![json!({"role": "system", "content": "You are a coding agent. Use the tools."})];
    let mut offset = 0;
    let mut slice = |len: usize| {
        let mut end = (offset + len).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let mut start = offset;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        offset = if end >= text.len() { 0 } else { end };
        text[start..end].to_string()
    };
    for turn in 0..turns {
        messages.push(json!({"role": "user", "content": slice(300)}));
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{turn}"), "type": "function",
            "function": {"name": "read_file", "arguments": format!("{{\"path\": \"src/file_{turn}.rs\"}}")}}]}));
        messages.push(
            json!({"role": "tool", "tool_call_id": format!("call_{turn}"), "content": slice(3200)}),
        );
    }
    messages
}

fn per_turn(c: &mut Criterion) {
    let tokenizer = Tokenizer::cl100k_base();
    let messages = conversation(100);
    let full = serde_json::to_vec(&json!({"model": "m", "messages": messages})).unwrap_or_default();
    let total = count_request(&full, &tokenizer, &MessageCache::new(1 << 20)).total;
    eprintln!("conversation: {} messages, {total} tokens", messages.len());
    let mut group = c.benchmark_group("count_turn_100");
    group.sample_size(20);
    group.bench_function("uncached", |b| {
        b.iter(|| count_request(black_box(&full), &tokenizer, &MessageCache::new(1 << 20)).total)
    });
    // Cached: the first 99 turns were seen; the last turn's 3 messages are new.
    let cache = MessageCache::new(64 << 20);
    let previous =
        serde_json::to_vec(&json!({"model": "m", "messages": messages[..messages.len() - 3]}))
            .unwrap_or_default();
    count_request(&previous, &tokenizer, &cache);
    group.bench_function("cached_new_turn", |b| {
        b.iter_batched(
            || {
                let cache = MessageCache::new(64 << 20);
                count_request(&previous, &tokenizer, &cache);
                cache
            },
            |cache| count_request(black_box(&full), &tokenizer, &cache).total,
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("cached_all_seen", |b| {
        count_request(&full, &tokenizer, &cache);
        b.iter(|| count_request(black_box(&full), &tokenizer, &cache).total)
    });
    // What the proxy does: the request was already scanned on the hot path (its layout is known), so a turn
    // costs one hash per message plus the tokenisation of what is new.
    let layout = match kimi_proxy::proxy::request::inspect(&full) {
        Ok(view) => view.layout,
        Err(_) => return,
    };
    let previous_layout = match kimi_proxy::proxy::request::inspect(&previous) {
        Ok(view) => view.layout,
        Err(_) => return,
    };
    group.bench_function("layout_new_turn", |b| {
        b.iter_batched(
            || {
                let cache = MessageCache::new(64 << 20);
                count_layout(&previous, &previous_layout, &tokenizer, &cache, 60);
                cache
            },
            |cache| count_layout(black_box(&full), &layout, &tokenizer, &cache, 60).total,
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("layout_all_seen", |b| {
        count_layout(&full, &layout, &tokenizer, &cache, 60);
        b.iter(|| count_layout(black_box(&full), &layout, &tokenizer, &cache, 60).total)
    });
    group.bench_function("scan_only", |b| {
        b.iter(|| kimi_proxy::proxy::request::inspect(black_box(&full)).is_ok())
    });
    group.finish();
}

fn streaming(c: &mut Criterion) {
    let tokenizer = Tokenizer::cl100k_base();
    let words: Vec<String> = corpus()
        .split_inclusive(' ')
        .take(20_000)
        .map(|w| {
            let delta = json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]});
            format!("data: {delta}\n\n")
        })
        .collect();
    let mut group = c.benchmark_group("stream_delta");
    group.throughput(Throughput::Elements(words.len() as u64));
    group.bench_function("parse_and_count", |b| {
        b.iter(|| {
            let mut parser = SseParser::new(1 << 20);
            let mut counter = CompletionCounter::new(tokenizer.clone());
            for event in &words {
                parser.feed(event.as_bytes(), |e| {
                    counter.on_event(e.data);
                });
            }
            counter.finish().total()
        })
    });
    group.bench_function("parse_only", |b| {
        b.iter(|| {
            let mut parser = SseParser::new(1 << 20);
            let mut n = 0;
            for event in &words {
                parser.feed(event.as_bytes(), |e| n += e.data.len());
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, throughput, per_turn, streaming);
criterion_main!(benches);
