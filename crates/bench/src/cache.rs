//! The cache scenario: the same deterministic request answered by the mock directly and by a kimi-proxy whose
//! response cache holds the answer (`cache = true` for the model in its config), in the same run, alternating
//! sides. The entry is warmed first; every measured answer must carry `x-kimi-proxy-cache: hit` and be byte for
//! byte the direct answer, and the proxy's `/api/stats` hit counter must have grown by exactly the number of
//! requests sent. The proxy without a cache (forwarding to the mock) runs as a third side, for scale. A streaming
//! request answered from the cache (replayed as SSE) is measured against the mock streaming the same answer.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

use crate::body;
use crate::loadgen::{self, Expect, RunResult, Spec, Summary};
use crate::report::{fmt_added, fmt_us};
use crate::scenarios::{Endpoint, PATH, Settings, round_order};

/// The proxy's header on an answer from its cache.
const CACHE_HEADER: &str = "x-kimi-proxy-cache";
/// A fixed completion id, so the mock's answers are the same bytes every time.
const MOCK_ID: &str = "kimi-bench-cache";
/// Content chunks of the answer (about 0.5 KB of text; the JSON answer is about 0.8 KB).
const CHUNKS: &str = "64";
/// Unmeasured requests per side before each measured run.
const WARM_REQUESTS: u64 = 100;
/// Added latency a hit may cost over the direct answer (issue 6), µs.
pub const TARGET_ADDED_US: i64 = 50;

/// The three sides of a non-streaming step.
#[derive(Clone, Debug)]
pub struct Step {
    pub concurrency: usize,
    /// Straight to the mock.
    pub direct: RunResult,
    /// The proxy answering from its cache.
    pub hit: RunResult,
    /// The proxy without a cache, forwarding to the mock (for scale).
    pub forwarded: RunResult,
}

/// What the cache scenario measured.
#[derive(Clone, Debug)]
pub struct CacheResults {
    pub answer_bytes: usize,
    pub replay_bytes: usize,
    pub steps: Vec<Step>,
    /// Streaming at concurrency 1: the mock streaming the answer (unpaced) vs the proxy replaying it.
    pub stream_direct: RunResult,
    pub stream_hit: RunResult,
    /// Requests sent to the caching proxy (warm-ups and checks included) and the growth of its hit and miss
    /// counters over the scenario.
    pub sent: u64,
    pub hits: u64,
    pub misses: u64,
    /// Misses before the entry was stored (all during the setup).
    pub setup_misses: u64,
}

/// The cache counters of `/api/stats`.
async fn counters(proxy: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let stats = loadgen::fetch(proxy, "/api/stats", &[], None).await?;
    ensure!(
        stats.status == StatusCode::OK,
        "/api/stats answered {}",
        stats.status
    );
    let stats: Value = serde_json::from_slice(&stats.body).context("/api/stats is not JSON")?;
    let cache = &stats["response_cache"];
    match (cache["hits"].as_u64(), cache["misses"].as_u64()) {
        (Some(hits), Some(misses)) => Ok((hits, misses)),
        _ => bail!("/api/stats has no response_cache counters"),
    }
}

fn mock_headers() -> Vec<(HeaderName, HeaderValue)> {
    vec![
        (
            HeaderName::from_static("x-mock-id"),
            HeaderValue::from_static(MOCK_ID),
        ),
        (
            HeaderName::from_static("x-mock-chunks"),
            HeaderValue::from_static(CHUNKS),
        ),
    ]
}

fn is_hit(fetched: &loadgen::Fetched) -> bool {
    fetched
        .headers
        .get(CACHE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"hit")
}

/// The content, finish reason and usage a replayed stream carries, in the shape of a JSON answer's.
fn replayed(sse: &[u8]) -> anyhow::Result<(String, Value, Value)> {
    let text = std::str::from_utf8(sse)?;
    ensure!(
        text.ends_with("data: [DONE]\n\n"),
        "the replay does not end with [DONE]"
    );
    let (mut content, mut finish, mut usage) = (String::new(), Value::Null, Value::Null);
    for event in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if event == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(event)?;
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
        if !chunk["choices"][0]["finish_reason"].is_null() {
            finish = chunk["choices"][0]["finish_reason"].clone();
        }
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
    }
    Ok((content, finish, usage))
}

/// The expected answers, and the misses it took to store the entry.
struct Prepared {
    answer: Bytes,
    replay: Bytes,
    stream: Bytes,
    misses: u64,
}

/// Checks the setup (the answers are deterministic, the cache stores and replays them) and returns the expected
/// answers.
async fn prepare(
    direct: &Endpoint,
    cached: &Endpoint,
    forwarding: &Endpoint,
    plain: &Bytes,
    streamed: &Bytes,
) -> anyhow::Result<Prepared> {
    let headers = mock_headers();
    let answer = loadgen::fetch(direct.addr, PATH, &headers, Some(plain.clone())).await?;
    let again = loadgen::fetch(direct.addr, PATH, &headers, Some(plain.clone())).await?;
    ensure!(
        answer.status == StatusCode::OK && answer.body == again.body,
        "the mock's answer is not the same bytes twice ({})",
        answer.status
    );
    let forwarded = loadgen::fetch(forwarding.addr, PATH, &headers, Some(plain.clone())).await?;
    ensure!(
        forwarded.status == StatusCode::OK && forwarded.body == answer.body,
        "the proxy without a cache changed the answer ({})",
        forwarded.status
    );
    // The first request through the caching proxy is a miss; the proxy stores the answer once it has been
    // recorded (just after the answer ends), so the next ones become hits shortly after.
    let mut misses = 0u64;
    loop {
        let fetched = loadgen::fetch(cached.addr, PATH, &headers, Some(plain.clone())).await?;
        ensure!(
            fetched.status == StatusCode::OK && fetched.body == answer.body,
            "the caching proxy's answer differs from the direct one ({}, {})",
            fetched.status,
            if is_hit(&fetched) { "a hit" } else { "a miss" }
        );
        if is_hit(&fetched) {
            break;
        }
        misses += 1;
        ensure!(
            misses <= 50,
            "no answer came from the cache after {misses} requests; is the cache on for the model?"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        misses >= 1,
        "the first request through the caching proxy was already a hit"
    );
    let replay = loadgen::fetch(cached.addr, PATH, &headers, Some(streamed.clone())).await?;
    ensure!(
        replay.status == StatusCode::OK && is_hit(&replay),
        "the streaming request was not answered from the cache ({})",
        replay.status
    );
    let json: Value = serde_json::from_slice(&answer.body)?;
    let (content, finish, usage) = replayed(&replay.body)?;
    ensure!(
        json["choices"][0]["message"]["content"].as_str() == Some(content.as_str())
            && json["choices"][0]["finish_reason"] == finish
            && json["usage"] == usage,
        "the replayed stream does not carry the cached answer"
    );
    let stream = loadgen::fetch(direct.addr, PATH, &headers, Some(streamed.clone())).await?;
    let stream_again = loadgen::fetch(direct.addr, PATH, &headers, Some(streamed.clone())).await?;
    ensure!(
        stream.status == StatusCode::OK && stream.body == stream_again.body,
        "the mock's stream is not the same bytes twice ({})",
        stream.status
    );
    Ok(Prepared {
        answer: answer.body,
        replay: replay.body,
        stream: stream.body,
        misses,
    })
}

/// Runs one side: an unmeasured warm-up run, then the measured one. Returns the measured result and the number
/// of requests sent.
async fn side(
    endpoint: &Endpoint,
    body: &Bytes,
    concurrency: usize,
    requests: u64,
    streaming: bool,
    expect: &Arc<Expect>,
) -> anyhow::Result<(RunResult, u64)> {
    let spec = |requests: u64| Spec {
        addr: endpoint.addr,
        path: PATH.into(),
        body: body.clone(),
        headers: mock_headers(),
        concurrency,
        requests,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        streaming,
        stagger: Duration::ZERO,
        expect: Some(Arc::clone(expect)),
    };
    let warm = loadgen::run(spec(WARM_REQUESTS)).await?;
    let measured = loadgen::run(spec(requests)).await?;
    let sent = warm.ok + warm.errors + measured.ok + measured.errors;
    ensure!(
        warm.errors == 0,
        "{} errors warming {}: {}",
        warm.errors,
        endpoint.name,
        warm.error_samples.join("; ")
    );
    Ok((measured, sent))
}

fn progress(label: &str, side: &str, result: &RunResult) {
    let latency = Summary::of(&result.latency);
    eprintln!(
        "kimi-bench: cache {label} {side:<9} ok={} errors={} p50={}µs p99={}µs p99.9={}µs{}",
        result.ok,
        result.errors,
        latency.p50,
        latency.p99,
        latency.p999,
        result
            .error_samples
            .first()
            .map_or(String::new(), |e| format!(" first error: {e}"))
    );
}

/// The scenario. `cached` is a proxy with the cache on for `mock-model`; `forwarding` one without.
pub async fn run(
    settings: &Settings,
    direct: &Endpoint,
    cached: &Endpoint,
    forwarding: &Endpoint,
) -> anyhow::Result<CacheResults> {
    let plain = body::chat_body_at(false, 0.0);
    let streamed = body::chat_body_at(true, 0.0);
    let (hits_before, misses_before) = counters(cached.addr).await?;
    let Prepared {
        answer,
        replay,
        stream,
        misses: setup_misses,
    } = prepare(direct, cached, forwarding, &plain, &streamed).await?;
    // The checks above sent the misses, one hit and one replay to the caching proxy.
    let mut sent = setup_misses + 2;
    let json = Arc::new(Expect {
        body: answer.clone(),
        header: None,
    });
    let json_hit = Arc::new(Expect {
        body: answer.clone(),
        header: Some((
            HeaderName::from_static(CACHE_HEADER),
            HeaderValue::from_static("hit"),
        )),
    });
    let mut steps = Vec::new();
    for concurrency in [1, settings.cache_concurrency] {
        let label = format!("c={concurrency}");
        let mut results = [
            RunResult::empty()?,
            RunResult::empty()?,
            RunResult::empty()?,
        ];
        let sides = [(direct, &json), (cached, &json_hit), (forwarding, &json)];
        for round in 0..settings.rounds.max(1) {
            let requests = settings.per_round(settings.cache_requests, round);
            for index in round_order(sides.len(), round) {
                let (Some(&(endpoint, expect)), Some(total)) =
                    (sides.get(index), results.get_mut(index))
                else {
                    continue;
                };
                let (result, n) =
                    side(endpoint, &plain, concurrency, requests, false, expect).await?;
                if index == 1 {
                    sent += n;
                }
                progress(&label, &endpoint.name, &result);
                total.merge(&result)?;
            }
        }
        let [direct, hit, forwarded] = results;
        steps.push(Step {
            concurrency,
            direct,
            hit,
            forwarded,
        });
    }

    let stream_expect = Arc::new(Expect {
        body: stream,
        header: None,
    });
    let replay_expect = Arc::new(Expect {
        body: replay.clone(),
        header: Some((
            HeaderName::from_static(CACHE_HEADER),
            HeaderValue::from_static("hit"),
        )),
    });
    let mut streams = [RunResult::empty()?, RunResult::empty()?];
    let sides = [(direct, &stream_expect), (cached, &replay_expect)];
    for round in 0..settings.rounds.max(1) {
        let requests = settings.per_round(settings.cache_stream_requests, round);
        for index in round_order(sides.len(), round) {
            let (Some(&(endpoint, expect)), Some(total)) =
                (sides.get(index), streams.get_mut(index))
            else {
                continue;
            };
            let (result, n) = side(endpoint, &streamed, 1, requests, true, expect).await?;
            if index == 1 {
                sent += n;
            }
            progress("stream c=1", &endpoint.name, &result);
            total.merge(&result)?;
        }
    }
    let [stream_direct, stream_hit] = streams;

    let (hits_after, misses_after) = counters(cached.addr).await?;
    Ok(CacheResults {
        answer_bytes: answer.len(),
        replay_bytes: replay.len(),
        steps,
        stream_direct,
        stream_hit,
        sent,
        hits: hits_after.saturating_sub(hits_before),
        misses: misses_after.saturating_sub(misses_before),
        setup_misses,
    })
}

impl CacheResults {
    /// Every request after the first was a hit, and every measured answer checked out.
    pub fn verified(&self) -> bool {
        let errors: u64 = self
            .steps
            .iter()
            .map(|s| s.direct.errors + s.hit.errors + s.forwarded.errors)
            .sum::<u64>()
            + self.stream_direct.errors
            + self.stream_hit.errors;
        errors == 0 && self.misses == self.setup_misses && self.hits + self.misses == self.sent
    }

    /// Added latency of a hit over the direct answer at concurrency 1: (p50, p99), µs.
    pub fn added_c1(&self) -> Option<(i64, i64)> {
        let step = self.steps.iter().find(|s| s.concurrency == 1)?;
        let (direct, hit) = (
            Summary::of(&step.direct.latency),
            Summary::of(&step.hit.latency),
        );
        Some((diff(hit.p50, direct.p50), diff(hit.p99, direct.p99)))
    }
}

fn diff(a: u64, b: u64) -> i64 {
    i64::try_from(i128::from(a) - i128::from(b)).unwrap_or(i64::MAX)
}

/// The report's section.
pub fn render(out: &mut String, settings: &Settings, results: &CacheResults) {
    let _ = writeln!(out, "\n## Response cache: a hit vs the direct answer\n");
    let _ = writeln!(
        out,
        "The same deterministic request (the benchmark body with `temperature: 0`), non-streaming, straight to \
         the mock (\"direct\"), to a second kimi-proxy with `cache = true` for the model whose cache holds the \
         answer (\"cache hit\"; the entry is stored by one request before measuring), and to the proxy without a \
         cache, which forwards to the mock (\"forwarded\", for scale). Sides alternate round by round, each run \
         after {WARM_REQUESTS} unmeasured requests; {} measured requests per side and concurrency. The answer is \
         {} bytes of JSON (`x-mock-chunks: {CHUNKS}`, a fixed id so that every answer is the same bytes).\n",
        settings.cache_requests, results.answer_bytes
    );
    let _ = writeln!(
        out,
        "Checked: every measured answer from the caching proxy carried `{CACHE_HEADER}: hit` and was byte for \
         byte the direct answer ({} errors); its `/api/stats` hit counter grew by {} for {} requests sent, \
         misses by {} (before the entry was stored, during the setup): **{}**.\n",
        results.steps.iter().map(|s| s.hit.errors).sum::<u64>() + results.stream_hit.errors,
        results.hits,
        results.sent,
        results.misses,
        if results.verified() {
            "every answer was a hit"
        } else {
            "NOT every answer was a verified hit"
        }
    );
    let _ = writeln!(
        out,
        "| concurrency | metric | direct | cache hit | added | forwarded (no cache) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    for step in &results.steps {
        let (d, h, f) = (
            Summary::of(&step.direct.latency),
            Summary::of(&step.hit.latency),
            Summary::of(&step.forwarded.latency),
        );
        for (name, d, h, f) in [
            ("p50", d.p50, h.p50, f.p50),
            ("p99", d.p99, h.p99, f.p99),
            ("p99.9", d.p999, h.p999, f.p999),
        ] {
            let _ = writeln!(
                out,
                "| {} | latency {name} | {} | {} | {} | {} |",
                step.concurrency,
                fmt_us(d),
                fmt_us(h),
                fmt_added(diff(h, d)),
                fmt_us(f)
            );
        }
        let _ = writeln!(
            out,
            "| {} | requests/s | {:.0} | {:.0} | {:.1}% | {:.0} |",
            step.concurrency,
            step.direct.rps(),
            step.hit.rps(),
            if step.direct.rps() > 0.0 {
                100.0 * step.hit.rps() / step.direct.rps()
            } else {
                0.0
            },
            step.forwarded.rps()
        );
    }
    let (d, h) = (
        Summary::of(&results.stream_direct.latency),
        Summary::of(&results.stream_hit.latency),
    );
    let (dt, ht) = (
        Summary::of(&results.stream_direct.ttft),
        Summary::of(&results.stream_hit.ttft),
    );
    let _ = writeln!(
        out,
        "\nStreaming, concurrency 1, {} requests per side: \"direct\" is the mock streaming the same answer \
         unpaced ({CHUNKS} content events, then usage and `[DONE]`), \"cache hit\" is the proxy replaying the \
         stored answer as SSE ({} bytes: one content event, the finish reason, usage, `[DONE]`; checked the same \
         way).\n",
        settings.cache_stream_requests, results.replay_bytes
    );
    let _ = writeln!(
        out,
        "| metric | direct stream | replayed from cache | added |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (name, d, h) in [
        ("TTFT p50", dt.p50, ht.p50),
        ("TTFT p99", dt.p99, ht.p99),
        ("whole stream p50", d.p50, h.p50),
        ("whole stream p99", d.p99, h.p99),
        ("whole stream p99.9", d.p999, h.p999),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            fmt_us(d),
            fmt_us(h),
            fmt_added(diff(h, d))
        );
    }
    for (side, result) in [
        ("stream direct", &results.stream_direct),
        ("stream hit", &results.stream_hit),
    ]
    .into_iter()
    .chain(results.steps.iter().flat_map(|s| {
        [
            ("direct", &s.direct),
            ("cache hit", &s.hit),
            ("forwarded", &s.forwarded),
        ]
    })) {
        if let Some(sample) = result.error_samples.first() {
            let _ = writeln!(out, "\nFirst {side} error: `{sample}`");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_replayed_stream() -> anyhow::Result<()> {
        let sse = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hi \"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\ndata: [DONE]\n\n";
        let (content, finish, usage) = replayed(sse)?;
        assert_eq!(content, "hi ");
        assert_eq!(finish, "stop");
        assert_eq!(usage["total_tokens"], 3);
        assert!(replayed(b"data: {}\n\n").is_err());
        Ok(())
    }
}
