//! The responses scenario: a Responses API client (`POST /v1/responses`) through the proxy to the chat mock —
//! the request translated to chat completions and the answer back — beside a chat client sending the same
//! content to the same proxy and mock, and the mock reached directly, for scale. Same content, same answer
//! size; sides alternate round by round. Issue 16's target: the Responses path adds at most 2× what the chat
//! path adds at p50 (c=1) and keeps at least 80 % of its throughput (c=50).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::ensure;
use bytes::Bytes;
use http::StatusCode;

use crate::body;
use crate::loadgen::{self, RunResult, Spec, Summary};
use crate::report::{fmt_added, fmt_us};
use crate::scenarios::{Endpoint, PATH, Settings, Targets, latency_then_throughput, round_order};

/// The Responses route.
pub const RESPONSES_PATH: &str = "/v1/responses";
/// At most this multiple of the chat path's added p50 (c=1).
pub const TARGET_ADDED_RATIO: f64 = 2.0;
/// At least this share of the chat path's throughput (c=50).
pub const TARGET_THROUGHPUT_SHARE: f64 = 0.8;

/// One side's latency (c=1) and throughput (c=50) runs.
#[derive(Clone, Debug)]
pub struct Side {
    pub latency: RunResult,
    pub throughput: RunResult,
}

/// What the scenario measured: the mock directly (chat), the proxy with a chat client, and the proxy with a
/// Responses client.
#[derive(Clone, Debug)]
pub struct ResponsesResults {
    pub direct: Side,
    pub chat: Side,
    pub responses: Side,
    pub chat_bytes: usize,
    pub responses_bytes: usize,
}

impl ResponsesResults {
    /// Added p50 at c=1 over the direct answer: (chat, responses), µs.
    pub fn added_p50(&self) -> (i64, i64) {
        let direct = Summary::of(&self.direct.latency.latency).p50;
        let chat = Summary::of(&self.chat.latency.latency).p50;
        let responses = Summary::of(&self.responses.latency.latency).p50;
        (diff(chat, direct), diff(responses, direct))
    }

    /// Responses added p50 ÷ chat added p50 (c=1).
    pub fn added_ratio(&self) -> Option<f64> {
        let (chat, responses) = self.added_p50();
        (chat > 0).then(|| responses as f64 / chat as f64)
    }

    /// Responses p50 ÷ chat p50, whole request (c=1).
    pub fn p50_ratio(&self) -> Option<f64> {
        let chat = Summary::of(&self.chat.latency.latency).p50;
        let responses = Summary::of(&self.responses.latency.latency).p50;
        (chat > 0).then(|| responses as f64 / chat as f64)
    }

    /// Responses requests/s ÷ chat requests/s (c=50).
    pub fn throughput_share(&self) -> Option<f64> {
        let chat = self.chat.throughput.rps();
        (chat > 0.0).then(|| self.responses.throughput.rps() / chat)
    }

    pub fn errors(&self) -> u64 {
        [&self.direct, &self.chat, &self.responses]
            .iter()
            .map(|s| s.latency.errors + s.throughput.errors)
            .sum()
    }
}

fn diff(a: u64, b: u64) -> i64 {
    i64::try_from(i128::from(a) - i128::from(b)).unwrap_or(i64::MAX)
}

/// The proxy answers a Responses request with a Response object (checked once before measuring).
async fn check(proxy: &Endpoint, body: &Bytes) -> anyhow::Result<()> {
    let fetched = loadgen::fetch(proxy.addr, RESPONSES_PATH, &[], Some(body.clone())).await?;
    ensure!(
        fetched.status == StatusCode::OK,
        "the proxy answered the Responses request with {}",
        fetched.status
    );
    let answer: serde_json::Value = serde_json::from_slice(&fetched.body)?;
    ensure!(
        answer["object"] == "response" && answer["status"] == "completed",
        "the proxy's answer is not a completed Response object"
    );
    Ok(())
}

pub async fn run(settings: &Settings, targets: &Targets) -> anyhow::Result<ResponsesResults> {
    let chat = body::chat_body(false);
    let responses = body::responses_body(false);
    check(&targets.proxy, &responses).await?;
    let sides: [(&Endpoint, &str, &Bytes, &str); 3] = [
        (&targets.direct, PATH, &chat, "direct"),
        (&targets.proxy, PATH, &chat, "chat"),
        (&targets.proxy, RESPONSES_PATH, &responses, "responses"),
    ];
    let mut latency = [
        RunResult::empty()?,
        RunResult::empty()?,
        RunResult::empty()?,
    ];
    let mut throughput = [
        RunResult::empty()?,
        RunResult::empty()?,
        RunResult::empty()?,
    ];
    let rounds = settings.rounds.max(1);
    let per_round = settings.throughput_duration / u32::try_from(rounds).unwrap_or(1);
    for round in 0..rounds {
        for index in round_order(sides.len(), round) {
            let (Some(&(endpoint, path, body, name)), Some(lat), Some(thr)) = (
                sides.get(index),
                latency.get_mut(index),
                throughput.get_mut(index),
            ) else {
                continue;
            };
            let spec = |concurrency: usize, requests: u64, duration: Duration| {
                endpoint.aim(Spec {
                    addr: endpoint.addr,
                    path: path.into(),
                    body: body.clone(),
                    headers: Vec::new(),
                    concurrency,
                    requests,
                    warmup: settings.warmup,
                    duration,
                    request_timeout: Duration::from_secs(10),
                    streaming: false,
                    stagger: Duration::ZERO,
                    expect: None,
                })
            };
            latency_then_throughput(
                "responses",
                name,
                settings,
                round,
                per_round,
                spec,
                (lat, thr),
            )
            .await?;
        }
    }
    let [direct_l, chat_l, responses_l] = latency;
    let [direct_t, chat_t, responses_t] = throughput;
    Ok(ResponsesResults {
        direct: Side {
            latency: direct_l,
            throughput: direct_t,
        },
        chat: Side {
            latency: chat_l,
            throughput: chat_t,
        },
        responses: Side {
            latency: responses_l,
            throughput: responses_t,
        },
        chat_bytes: chat.len(),
        responses_bytes: responses.len(),
    })
}

fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or("n/a".into(), |r| format!("{r:.2}×"))
}

/// The report's section.
pub fn render(out: &mut String, settings: &Settings, results: &ResponsesResults) {
    let _ = writeln!(
        out,
        "\n## Responses client vs chat client, both to the chat mock\n"
    );
    let _ = writeln!(
        out,
        "The benchmark request as a chat completions request ({} bytes) and as a Responses request ({} bytes: the \
         system text as `instructions`, the user text as an input message, `store: false` as Codex sends it), \
         non-streaming, through the same proxy to the same chat mock: the Responses request is translated to chat \
         and the answer back to a Response object. \"direct\" is the chat request straight to the mock. Sides \
         alternate round by round; {} measured requests per side at c=1, {:.1} s per side at c={}. Errors: {}.\n",
        results.chat_bytes,
        results.responses_bytes,
        settings.latency_requests,
        settings.throughput_duration.as_secs_f64(),
        settings.throughput_concurrency,
        results.errors()
    );
    let _ = writeln!(out, "| metric | direct | chat client | Responses client |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let (d, c, r) = (
        Summary::of(&results.direct.latency.latency),
        Summary::of(&results.chat.latency.latency),
        Summary::of(&results.responses.latency.latency),
    );
    for (name, d, c, r) in [
        ("p50 (c=1)", d.p50, c.p50, r.p50),
        ("p99 (c=1)", d.p99, c.p99, r.p99),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} ({}) | {} ({}) |",
            fmt_us(d),
            fmt_us(c),
            fmt_added(diff(c, d)),
            fmt_us(r),
            fmt_added(diff(r, d)),
        );
    }
    let _ = writeln!(
        out,
        "| requests/s (c={}) | {:.0} | {:.0} | {:.0} |",
        settings.throughput_concurrency,
        results.direct.throughput.rps(),
        results.chat.throughput.rps(),
        results.responses.throughput.rps(),
    );
    let _ = writeln!(
        out,
        "\nResponses vs chat: added p50 {} (whole p50 {}), throughput {}.",
        fmt_ratio(results.added_ratio()),
        fmt_ratio(results.p50_ratio()),
        results
            .throughput_share()
            .map_or("n/a".into(), |s| format!("{:.1} %", s * 100.0)),
    );
}
