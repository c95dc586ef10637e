//! What translating a streamed answer costs per event, for an Anthropic client of a chat provider
//! (`ChatToMessagesStream`: each chat chunk's `data:` in, Anthropic events out) and a chat client of an
//! Anthropic provider (`MessagesToChatStream`): time per event (criterion) and heap allocations per event,
//! counted by a counting global allocator around one whole stream and printed before the timings. The output
//! buffer is reused between events, as the proxy's `EventBody` does with its own. The end-to-end cost over
//! loopback is the `kimi-bench --scenarios messages` scenario. Run: `cargo bench -p kimi-dialects --bench translate`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kimi_dialects::anthropic::{AnswerContext, ChatToMessagesStream, MessagesToChatStream};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// The system allocator, counting allocations, reallocations and their bytes (`stats_alloc`: the workspace
/// forbids `unsafe`, which a hand-written `GlobalAlloc` needs).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Text deltas per stream.
const DELTAS: usize = 200;

/// A chat completions stream as a provider sends it: a role chunk, text deltas of a few words, the finish chunk,
/// the usage chunk, `[DONE]` (the `data:` payloads only; SSE framing is the parser's, not the translator's).
fn chat_stream() -> Vec<Vec<u8>> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_767_000_000u64,
            "model": "mock-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        }))
        .unwrap()
    };
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        serde_json::Value::Null,
    )];
    for i in 0..DELTAS {
        events.push(chunk(
            serde_json::json!({"content": format!("word{i} and more ")}),
            serde_json::Value::Null,
        ));
    }
    events.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    events.push(
        serde_json::to_vec(&serde_json::json!({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_767_000_000u64,
            "model": "mock-model", "choices": [],
            "usage": {"prompt_tokens": 4000, "completion_tokens": DELTAS, "total_tokens": 4000 + DELTAS}
        }))
        .unwrap(),
    );
    events.push(b"[DONE]".to_vec());
    events
}

/// An Anthropic Messages stream (<https://docs.claude.com/en/api/messages-streaming>): `message_start`, one text
/// block of deltas, `message_delta` with the stop reason and usage, `message_stop` (`data:` payloads only).
fn messages_stream() -> Vec<Vec<u8>> {
    let mut events = vec![
        serde_json::json!({"type": "message_start", "message": {
            "id": "msg_bench", "type": "message", "role": "assistant", "content": [], "model": "claude-mock",
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 4000, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}
        }}),
        serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ];
    for i in 0..DELTAS {
        events.push(
            serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": format!("word{i} and more ")}}),
        );
    }
    events.push(serde_json::json!({"type": "content_block_stop", "index": 0}));
    events.push(serde_json::json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": DELTAS}}));
    events.push(serde_json::json!({"type": "message_stop"}));
    events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect()
}

fn context() -> AnswerContext {
    AnswerContext {
        client_model: "claude-sonnet-4-5".into(),
        include_usage: true,
        created: 1_767_000_000,
        ..AnswerContext::default()
    }
}

/// Translates one whole stream, the output buffer reused (cleared after each event as if sent).
fn to_messages(events: &[Vec<u8>], out: &mut Vec<u8>) -> usize {
    let mut translator = ChatToMessagesStream::new(&context());
    let mut written = 0;
    for event in events {
        translator.push(event, out);
        written += out.len();
        out.clear();
    }
    translator.finish(out);
    written + out.len()
}

fn to_chat(events: &[Vec<u8>], out: &mut Vec<u8>) -> usize {
    let mut translator = MessagesToChatStream::new(&context());
    let mut written = 0;
    for event in events {
        translator.push("", event, out);
        written += out.len();
        out.clear();
    }
    translator.finish(out);
    written + out.len()
}

/// Allocations and bytes per event over one whole stream (after a warm-up stream, the buffer's growth done).
fn per_event(name: &str, events: &[Vec<u8>], run: fn(&[Vec<u8>], &mut Vec<u8>) -> usize) {
    let mut out = Vec::new();
    black_box(run(events, &mut out));
    out.clear();
    let region = Region::new(GLOBAL);
    black_box(run(events, &mut out));
    let change = region.change();
    let (allocations, bytes) = (
        change.allocations + change.reallocations,
        change.bytes_allocated + change.bytes_reallocated.max(0) as usize,
    );
    let n = events.len() as f64;
    eprintln!(
        "translate/{name}: {} events, {:.1} allocations/event, {:.0} bytes allocated/event",
        events.len(),
        allocations as f64 / n,
        bytes as f64 / n
    );
}

fn bench(c: &mut Criterion) {
    let chat = chat_stream();
    let messages = messages_stream();
    per_event("chat_to_messages", &chat, to_messages);
    per_event("messages_to_chat", &messages, to_chat);
    let mut group = c.benchmark_group("translate");
    group.throughput(criterion::Throughput::Elements(chat.len() as u64));
    let mut out = Vec::new();
    group.bench_function("chat_to_messages_stream", |b| {
        b.iter(|| black_box(to_messages(&chat, &mut out)));
    });
    group.throughput(criterion::Throughput::Elements(messages.len() as u64));
    group.bench_function("messages_to_chat_stream", |b| {
        b.iter(|| black_box(to_chat(&messages, &mut out)));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
