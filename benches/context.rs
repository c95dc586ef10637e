//! Context transforms on a synthetic agent session: 200 messages, about 150k tokens of file reads, grep output,
//! test logs, diffs and listings. Counts come from the per-message cache (warmed once, as on an agent's second
//! turn), and what each message says (role, links, placeholders) from the engine's own cache, except in
//! `all_transforms_first_sight`. Before measuring, prints the savings of each transform on the fixture
//! (reported in BENCHMARKS.md).
#![allow(clippy::panic)]

use std::fmt::Write;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use kimi_proxy::config::Config;
use kimi_proxy::config::context::Enabled;
use kimi_proxy::context::conversation::Counter;
use kimi_proxy::context::{ContextEngine, PlanRequest, Resolved};
use kimi_proxy::proxy::request::{RequestLayout, inspect};
use kimi_proxy::tokens::Tokenizer;
use kimi_proxy::tokens::cache::MessageCache;
use serde_json::{Value, json};

/// The model's window: the session is at 94 % of it.
const WINDOW: u64 = 160_000;

/// A deterministic pseudo-random sequence (no dependency, same fixture everywhere).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const IDENTS: &[&str] = &[
    "session",
    "request",
    "record",
    "layout",
    "tokens",
    "cache",
    "writer",
    "resolver",
    "upstream",
    "stream",
    "budget",
    "limiter",
    "message",
    "summary",
    "placeholder",
    "offset",
    "window",
    "counter",
];

fn ident(rng: &mut Rng) -> &'static str {
    IDENTS[rng.below(IDENTS.len() as u64) as usize]
}

fn source_file(rng: &mut Rng, lines: usize) -> String {
    let mut out = String::new();
    for i in 0..lines {
        let _ = match rng.below(6) {
            0 => writeln!(out, "/// Returns the {} of the {}.", ident(rng), ident(rng)),
            1 => writeln!(
                out,
                "pub fn {}_{}(&self, {}: u64) -> Option<u64> {{",
                ident(rng),
                i,
                ident(rng)
            ),
            2 => writeln!(
                out,
                "    let {} = self.{}.get(&{})?;",
                ident(rng),
                ident(rng),
                ident(rng)
            ),
            3 => writeln!(
                out,
                "    if {}.len() > {} {{ return None; }}",
                ident(rng),
                rng.below(4096)
            ),
            4 => writeln!(
                out,
                "    Some({}.saturating_add({}))",
                ident(rng),
                rng.below(100)
            ),
            _ => writeln!(out, "}}"),
        };
    }
    out
}

fn grep_output(rng: &mut Rng, lines: usize) -> String {
    let mut out = String::new();
    for _ in 0..lines {
        let _ = writeln!(
            out,
            "src/{}/{}.rs:{}:    let {} = {}.{}(&{});",
            ident(rng),
            ident(rng),
            rng.below(900) + 1,
            ident(rng),
            ident(rng),
            ident(rng),
            ident(rng)
        );
    }
    out
}

fn test_log(rng: &mut Rng, tests: usize, fail: bool) -> String {
    let mut out = String::from(
        "   Compiling kimi-proxy v0.1.0\n    Finished `test` profile in 41.2s\n     Running unittests src/lib.rs\n\n",
    );
    let _ = writeln!(out, "running {tests} tests");
    for i in 0..tests {
        let status = if fail && i == tests / 2 {
            "FAILED"
        } else {
            "ok"
        };
        let _ = writeln!(
            out,
            "test {}::tests::{}_{} ... {status}",
            ident(rng),
            ident(rng),
            i
        );
    }
    if fail {
        let _ = writeln!(
            out,
            "\nfailures:\n\n---- {}::tests::{} stdout ----\nthread panicked at src/{}.rs:{}:9:\nassertion `left == right` failed\n  left: {}\n right: {}",
            ident(rng),
            ident(rng),
            ident(rng),
            rng.below(500),
            rng.below(100),
            rng.below(100)
        );
        let _ = writeln!(out, "\ntest result: FAILED. {} passed; 1 failed", tests - 1);
    } else {
        let _ = writeln!(out, "\ntest result: ok. {tests} passed; 0 failed");
    }
    out
}

fn diff(rng: &mut Rng, hunks: usize) -> String {
    let file = ident(rng);
    let mut out = format!(
        "diff --git a/src/{file}.rs b/src/{file}.rs\n--- a/src/{file}.rs\n+++ b/src/{file}.rs\n"
    );
    for _ in 0..hunks {
        let at = rng.below(800);
        let _ = writeln!(out, "@@ -{at},7 +{at},9 @@");
        for _ in 0..3 {
            let _ = writeln!(out, "     let {} = {};", ident(rng), ident(rng));
        }
        let _ = writeln!(out, "-    let {} = {}.len();", ident(rng), ident(rng));
        let _ = writeln!(
            out,
            "+    let {} = {}.len().min({});",
            ident(rng),
            ident(rng),
            rng.below(64)
        );
        let _ = writeln!(out, "+    // {} before {}", ident(rng), ident(rng));
        for _ in 0..3 {
            let _ = writeln!(out, "     {}.{}();", ident(rng), ident(rng));
        }
    }
    out
}

/// An agent session: a system prompt, the task, 99 tool turns (one call and its result each), the last result
/// being the current turn: 200 messages.
pub fn agent_session(turns: usize) -> Value {
    let mut rng = Rng(0x5eed_cafe_f00d);
    let mut messages = vec![
        json!({"role": "system", "content": format!("You are a coding agent working in a Rust repository. {}", "Follow the repository's conventions; run the tests after each change; keep answers short. ".repeat(40))}),
        json!({"role": "user", "content": "The store drops records under load. Find why, fix it, and make the tests pass."}),
    ];
    for t in 0..turns {
        let size = rng.below(1000);
        let (tool, args, result) = match t % 7 {
            0 | 3 => (
                "read_file",
                json!({"path": format!("src/{}/{}.rs", ident(&mut rng), ident(&mut rng))}),
                source_file(&mut rng, 140 + (size % 160) as usize),
            ),
            1 | 5 => (
                "grep",
                json!({"pattern": ident(&mut rng), "path": "src"}),
                grep_output(&mut rng, 40 + (size % 80) as usize),
            ),
            2 => (
                "run_tests",
                json!({"command": "cargo test"}),
                test_log(&mut rng, 60 + (size % 60) as usize, t % 3 == 0),
            ),
            4 => (
                "git_diff",
                json!({}),
                diff(&mut rng, 8 + (size % 10) as usize),
            ),
            _ => (
                "list_dir",
                json!({"path": "src"}),
                (0..12)
                    .map(|_| format!("{}.rs\n", ident(&mut rng)))
                    .collect(),
            ),
        };
        let id = format!("call_{t:03}");
        messages.push(json!({"role": "assistant", "content": if t % 4 == 0 { json!(format!("Checking the {} next.", ident(&mut rng))) } else { Value::Null },
            "tool_calls": [{"id": id, "type": "function", "function": {"name": tool, "arguments": args.to_string()}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
    }
    json!({"model": "bench/model", "stream": true, "messages": messages})
}

fn engine(compaction: bool) -> ContextEngine {
    let text = format!(
        r#"builtin_catalog = false
[providers.p]
base_url = "http://127.0.0.1:1"
[models."bench/model"]
provider = "p"
max_context_size = {WINDOW}
[context.masking]
enabled = true
[context.observation]
enabled = true
[context.compaction]
enabled = {compaction}
cooldown_secs = 0
"#
    );
    let config = match Config::from_sources(Some(("bench", &text)), &|_: &str| None) {
        Ok(config) => config,
        Err(error) => panic!("{error}"),
    };
    ContextEngine::new(&config)
}

fn run(
    engine: &ContextEngine,
    counter: &Counter<'_>,
    (body, layout): (&Bytes, &RequestLayout),
    enabled: Enabled,
    dry_run: bool,
) -> kimi_proxy::context::Outcome {
    let layout = layout.clone();
    let plan = engine.plan(
        PlanRequest {
            body: body.clone(),
            layout,
            resolved: Resolved {
                enabled,
                force_compact: false,
            },
            window: WINDOW,
            conversation_key: 7,
            dry_run,
        },
        counter,
    );
    engine.finish(plan, None, counter).1
}

fn bench(c: &mut Criterion) {
    let body = Bytes::from(serde_json::to_vec(&agent_session(99)).unwrap_or_default());
    let tokenizer = Tokenizer::cl100k_base();
    let cache = MessageCache::new(64 * 1024 * 1024);
    let counter = Counter {
        tokenizer: &tokenizer,
        cache: &cache,
    };
    let layout = inspect(&body).map(|v| v.layout).unwrap_or_default();
    let on = |masking, observation, compaction| Enabled {
        masking,
        observation,
        compaction,
    };
    // Savings on the fixture, each transform alone and together (warms the cache too).
    let plain = engine(false);
    let compacting = engine(true);
    println!(
        "fixture: {} messages, {} bytes",
        layout.messages.len(),
        body.len()
    );
    for (name, engine, enabled) in [
        ("masking", &plain, on(true, false, false)),
        ("observation", &plain, on(false, true, false)),
        ("masking+observation", &plain, on(true, true, false)),
        ("compaction", &compacting, on(false, false, true)),
        ("all", &compacting, on(true, true, true)),
    ] {
        let o = run(engine, &counter, (&body, &layout), enabled, true);
        println!(
            "savings {name:<20} before {:>7} after {:>7} saved {:>5.1}% (masked {}, observed {}, compacted {}, compaction {:?})",
            o.tokens_before,
            o.tokens_after,
            100.0 * (o.tokens_before - o.tokens_after) as f64 / o.tokens_before as f64,
            o.masked_messages,
            o.observed_messages,
            o.compacted_messages,
            o.compaction
        );
    }

    let mut group = c.benchmark_group("context_200_messages_150k_tokens");
    group.bench_function("inspect_only", |b| {
        b.iter(|| black_box(inspect(black_box(&body)).map(|v| v.layout.messages.len())))
    });
    group.bench_function("masking+observation", |b| {
        b.iter(|| {
            black_box(run(
                &plain,
                &counter,
                (&body, &layout),
                on(true, true, false),
                false,
            ))
        })
    });
    group.bench_function("all_transforms", |b| {
        b.iter(|| {
            black_box(run(
                &compacting,
                &counter,
                (&body, &layout),
                on(true, true, true),
                false,
            ))
        })
    });
    // First sight of every message by a new engine (token counts still cached): what an agent's first turn
    // through the transforms costs beyond counting.
    group.bench_function("all_transforms_first_sight", |b| {
        b.iter_batched(
            || engine(true),
            |fresh| {
                black_box(run(
                    &fresh,
                    &counter,
                    (&body, &layout),
                    on(true, true, true),
                    false,
                ))
            },
            criterion::BatchSize::LargeInput,
        )
    });
    // A compaction made anew every time (extractive summary of ~190 messages), not reused.
    group.bench_function("compaction_new_each_time", |b| {
        b.iter(|| {
            black_box(run(
                &compacting,
                &counter,
                (&body, &layout),
                on(false, false, true),
                true,
            ))
        })
    });
    // Reused: the conversation's remembered compaction applied again (the steady state of a long session).
    let _ = run(
        &compacting,
        &counter,
        (&body, &layout),
        on(false, false, true),
        false,
    );
    group.bench_function("compaction_reused", |b| {
        b.iter(|| {
            black_box(run(
                &compacting,
                &counter,
                (&body, &layout),
                on(false, false, true),
                false,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
