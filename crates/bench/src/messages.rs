//! The messages scenario: an Anthropic Messages client (`POST /v1/messages`, `anthropic-version` as the SDKs
//! send it) through the proxy to the mock speaking Anthropic (native: passed through) and to the mock speaking
//! chat completions (translated both ways), beside a chat client through the proxy to the chat mock, and both
//! mock modes reached directly, for scale. The same content and answer size everywhere; sides alternate round by
//! round. Issue 15's targets: the native path adds no more than the chat path; the translated path adds at most
//! 2× what the native path adds at p50 (c=1) and keeps at least 80 % of its throughput (c=50).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::ensure;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::body;
use crate::loadgen::{self, RunResult, Spec, Summary};
use crate::report::{fmt_added, fmt_us};
use crate::scenarios::{Endpoint, PATH, Settings, Targets, latency_then_throughput, round_order};

/// Anthropic's Messages route.
pub const MESSAGES_PATH: &str = "/v1/messages";
/// At most this multiple of the native path's added p50 (c=1) for the translated path.
pub const TARGET_ADDED_RATIO: f64 = 2.0;
/// At least this share of the native path's throughput (c=50) for the translated path.
pub const TARGET_THROUGHPUT_SHARE: f64 = 0.8;

/// One side's latency (c=1) and throughput (c=50) runs.
#[derive(Clone, Debug)]
pub struct Side {
    pub latency: RunResult,
    pub throughput: RunResult,
}

/// What the scenario measured.
#[derive(Clone, Debug)]
pub struct MessagesResults {
    /// The chat request straight to the mock.
    pub direct_chat: Side,
    /// The Messages request straight to the mock's Anthropic mode.
    pub direct_messages: Side,
    /// A chat client through the proxy to the chat mock.
    pub chat: Side,
    /// A Messages client through the proxy to the Anthropic mock (passed through).
    pub native: Side,
    /// A Messages client through the proxy to the chat mock (translated).
    pub translated: Side,
    pub chat_bytes: usize,
    pub messages_bytes: usize,
}

fn p50(side: &Side) -> u64 {
    Summary::of(&side.latency.latency).p50
}

fn diff(a: u64, b: u64) -> i64 {
    i64::try_from(i128::from(a) - i128::from(b)).unwrap_or(i64::MAX)
}

impl MessagesResults {
    /// Added p50 at c=1 over the direct answer of the same mock mode: (chat, native, translated), µs.
    pub fn added_p50(&self) -> (i64, i64, i64) {
        let (dc, dm) = (p50(&self.direct_chat), p50(&self.direct_messages));
        (
            diff(p50(&self.chat), dc),
            diff(p50(&self.native), dm),
            diff(p50(&self.translated), dc),
        )
    }

    /// Native added p50 − chat added p50 (c=1), µs: the target is ≤ 0 (within the run's noise).
    pub fn native_over_chat(&self) -> i64 {
        let (chat, native, _) = self.added_p50();
        native - chat
    }

    /// Translated added p50 ÷ native added p50 (c=1).
    pub fn translated_ratio(&self) -> Option<f64> {
        let (_, native, translated) = self.added_p50();
        (native > 0).then(|| translated as f64 / native as f64)
    }

    /// Translated requests/s ÷ native requests/s (c=50).
    pub fn throughput_share(&self) -> Option<f64> {
        let native = self.native.throughput.rps();
        (native > 0.0).then(|| self.translated.throughput.rps() / native)
    }

    pub fn errors(&self) -> u64 {
        [
            &self.direct_chat,
            &self.direct_messages,
            &self.chat,
            &self.native,
            &self.translated,
        ]
        .iter()
        .map(|s| s.latency.errors + s.throughput.errors)
        .sum()
    }
}

fn anthropic_headers() -> Vec<(HeaderName, HeaderValue)> {
    vec![(
        HeaderName::from_static("anthropic-version"),
        HeaderValue::from_static("2023-06-01"),
    )]
}

/// `endpoint` answers `body` on the Messages route with an Anthropic Message (checked once before measuring).
async fn check(endpoint: &Endpoint, body: &Bytes, what: &str) -> anyhow::Result<()> {
    let mut headers = anthropic_headers();
    headers.extend(endpoint.headers.iter().cloned());
    let fetched =
        loadgen::fetch(endpoint.addr, MESSAGES_PATH, &headers, Some(body.clone())).await?;
    ensure!(
        fetched.status == StatusCode::OK,
        "{what}: the Messages request was answered {}",
        fetched.status
    );
    let answer: serde_json::Value = serde_json::from_slice(&fetched.body)?;
    ensure!(
        answer["type"] == "message" && answer["role"] == "assistant",
        "{what}: the answer is not an Anthropic Message"
    );
    Ok(())
}

pub async fn run(settings: &Settings, targets: &Targets) -> anyhow::Result<MessagesResults> {
    let chat = body::chat_body(false);
    let native = body::messages_body(body::NATIVE_MODEL);
    let translated = body::messages_body(body::MODEL);
    check(&targets.proxy, &native, "native").await?;
    check(&targets.proxy, &translated, "translated").await?;
    check(&targets.direct, &native, "direct").await?;
    type SideSpec<'a> = (&'a Endpoint, &'a str, &'a Bytes, &'a str, bool);
    let sides: [SideSpec<'_>; 5] = [
        (&targets.direct, PATH, &chat, "direct-chat", false),
        (&targets.direct, MESSAGES_PATH, &native, "direct-msg", true),
        (&targets.proxy, PATH, &chat, "chat", false),
        (&targets.proxy, MESSAGES_PATH, &native, "native", true),
        (
            &targets.proxy,
            MESSAGES_PATH,
            &translated,
            "translated",
            true,
        ),
    ];
    let mut latency: Vec<RunResult> = Vec::new();
    let mut throughput: Vec<RunResult> = Vec::new();
    for _ in 0..sides.len() {
        latency.push(RunResult::empty()?);
        throughput.push(RunResult::empty()?);
    }
    let rounds = settings.rounds.max(1);
    let per_round = settings.throughput_duration / u32::try_from(rounds).unwrap_or(1);
    for round in 0..rounds {
        for index in round_order(sides.len(), round) {
            let (Some(&(endpoint, path, body, name, anthropic)), Some(lat), Some(thr)) = (
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
                    headers: if anthropic {
                        anthropic_headers()
                    } else {
                        Vec::new()
                    },
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
                "messages",
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
    let mut sides = latency
        .into_iter()
        .zip(throughput)
        .map(|(latency, throughput)| Side {
            latency,
            throughput,
        });
    let mut next = || {
        sides
            .next()
            .ok_or_else(|| anyhow::anyhow!("a side of the messages scenario is missing"))
    };
    Ok(MessagesResults {
        direct_chat: next()?,
        direct_messages: next()?,
        chat: next()?,
        native: next()?,
        translated: next()?,
        chat_bytes: chat.len(),
        messages_bytes: native.len(),
    })
}

/// The report's section.
pub fn render(out: &mut String, settings: &Settings, results: &MessagesResults) {
    let _ = writeln!(
        out,
        "\n## Anthropic Messages client: native vs translated vs chat\n"
    );
    let _ = writeln!(
        out,
        "The benchmark request as an Anthropic Messages request ({} bytes: the system text as `system`, the user \
         text as a message, `anthropic-version: 2023-06-01`) and as a chat request ({} bytes), non-streaming. \
         native: through the proxy to the mock's Anthropic mode (a `type = \"anthropic\"` provider, passed \
         through); translated: through the proxy to the chat mock (translated to chat and back); chat: the chat \
         request through the proxy to the chat mock. \"direct\" columns reach the mock's two modes without the \
         proxy; added latency is over the direct answer of the same mode. Sides alternate round by round; {} \
         measured requests per side at c=1, {:.1} s per side at c={}. Errors: {}.\n",
        results.messages_bytes,
        results.chat_bytes,
        settings.latency_requests,
        settings.throughput_duration.as_secs_f64(),
        settings.throughput_concurrency,
        results.errors()
    );
    let _ = writeln!(
        out,
        "| metric | direct chat | direct messages | chat client | Messages native | Messages translated |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let s = |side: &Side| Summary::of(&side.latency.latency);
    let (dc, dm, c, n, t) = (
        s(&results.direct_chat),
        s(&results.direct_messages),
        s(&results.chat),
        s(&results.native),
        s(&results.translated),
    );
    for (name, dc, dm, c, n, t) in [
        ("p50 (c=1)", dc.p50, dm.p50, c.p50, n.p50, t.p50),
        ("p99 (c=1)", dc.p99, dm.p99, c.p99, n.p99, t.p99),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} ({}) | {} ({}) | {} ({}) |",
            fmt_us(dc),
            fmt_us(dm),
            fmt_us(c),
            fmt_added(diff(c, dc)),
            fmt_us(n),
            fmt_added(diff(n, dm)),
            fmt_us(t),
            fmt_added(diff(t, dc)),
        );
    }
    let _ = writeln!(
        out,
        "| requests/s (c={}) | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        settings.throughput_concurrency,
        results.direct_chat.throughput.rps(),
        results.direct_messages.throughput.rps(),
        results.chat.throughput.rps(),
        results.native.throughput.rps(),
        results.translated.throughput.rps(),
    );
    let _ = writeln!(
        out,
        "\nNative added p50 minus chat added p50: {}. Translated vs native: added p50 {}, throughput {}.",
        fmt_added(results.native_over_chat()),
        results
            .translated_ratio()
            .map_or("n/a".into(), |r| format!("{r:.2}×")),
        results
            .throughput_share()
            .map_or("n/a".into(), |s| format!("{:.1} %", s * 100.0)),
    );
}
