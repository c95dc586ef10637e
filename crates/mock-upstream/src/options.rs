//! Per-request behaviour parsed from `x-mock-*` headers.
//!
//! Invalid values are ignored (the defaults apply); parsing never fails.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};

use crate::MockConfig;

/// Upper bound for `x-mock-chunks` / `x-mock-reasoning` (guards memory in JSON mode).
const MAX_CHUNKS: usize = 1_000_000;
/// Upper bound for `x-mock-body-kb` (64 MiB).
const MAX_BODY_KB: usize = 64 * 1024;
/// Upper bound for any delay header (one hour).
const MAX_DELAY_MS: u64 = 3_600_000;

/// When the usage object is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UsageMode {
    /// JSON: always; SSE: only with `stream_options.include_usage == true`.
    Requested,
    /// Both modes, unconditionally.
    Always,
    /// Never.
    None,
}

/// Deliberate faults (`x-mock-fault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    CloseMidStream,
    Stall,
    StallHeaders,
    Garbage,
}

#[derive(Clone, Debug)]
pub(crate) struct MockOptions {
    pub(crate) chunks: usize,
    pub(crate) chunk_delay: Duration,
    pub(crate) ttft: Duration,
    pub(crate) usage: UsageMode,
    pub(crate) reasoning: usize,
    pub(crate) tool_call: bool,
    pub(crate) status: Option<StatusCode>,
    pub(crate) retry_after: Option<HeaderValue>,
    pub(crate) fail_times: Option<u64>,
    pub(crate) key: String,
    pub(crate) delay: Duration,
    pub(crate) fault: Option<Fault>,
    pub(crate) body_kb: Option<usize>,
    /// `x-mock-id`: a fixed completion id, so two answers can be compared byte for byte.
    pub(crate) id: Option<String>,
    /// `x-mock-stream-body: fixed`: a stream sent as one body with a `Content-Length`, as buffering gateways
    /// and simple servers do, instead of chunked frames.
    pub(crate) fixed_length: bool,
    /// Anthropic mode: `x-mock-cache-read` / `x-mock-cache-write`, the prompt tokens reported as read from and
    /// written to the prompt cache (`cache_read_input_tokens`, `cache_creation_input_tokens`).
    pub(crate) cache_read: u64,
    pub(crate) cache_write: u64,
    /// `x-mock-cached-tokens: N`: the Responses usage reports N of its input tokens as cached (at most all).
    pub(crate) cached_tokens: u64,
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    text(headers, name).and_then(|v| v.parse::<u64>().ok())
}

fn millis(headers: &HeaderMap, name: &str) -> Option<Duration> {
    number(headers, name).map(|ms| Duration::from_millis(ms.min(MAX_DELAY_MS)))
}

fn count(headers: &HeaderMap, name: &str) -> Option<usize> {
    number(headers, name).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

impl MockOptions {
    pub(crate) fn from_headers(headers: &HeaderMap, config: &MockConfig) -> Self {
        let usage = match text(headers, "x-mock-usage").map(str::to_ascii_lowercase) {
            Some(v) if v == "always" => UsageMode::Always,
            Some(v) if v == "none" => UsageMode::None,
            _ => UsageMode::Requested,
        };
        let fault = match text(headers, "x-mock-fault").map(str::to_ascii_lowercase) {
            Some(v) if v == "close-mid-stream" => Some(Fault::CloseMidStream),
            Some(v) if v == "stall" => Some(Fault::Stall),
            Some(v) if v == "stall-headers" => Some(Fault::StallHeaders),
            Some(v) if v == "garbage" => Some(Fault::Garbage),
            _ => None,
        };
        let status = number(headers, "x-mock-status")
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| (400..=599).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok());
        let tool_call = matches!(
            text(headers, "x-mock-tool-call")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("1" | "true" | "yes")
        );
        let id = text(headers, "x-mock-id")
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            .map(str::to_owned);
        let fixed_length =
            text(headers, "x-mock-stream-body").is_some_and(|v| v.eq_ignore_ascii_case("fixed"));
        Self {
            id,
            fixed_length,
            chunks: count(headers, "x-mock-chunks")
                .unwrap_or(config.default_chunks)
                .min(MAX_CHUNKS),
            chunk_delay: millis(headers, "x-mock-chunk-delay-ms")
                .unwrap_or(config.default_chunk_delay),
            ttft: millis(headers, "x-mock-ttft-ms").unwrap_or(config.default_ttft),
            usage,
            reasoning: count(headers, "x-mock-reasoning")
                .unwrap_or(0)
                .min(MAX_CHUNKS),
            tool_call,
            status,
            retry_after: headers.get("x-mock-retry-after").cloned(),
            fail_times: number(headers, "x-mock-fail-times"),
            key: text(headers, "x-mock-key").unwrap_or_default().to_owned(),
            delay: millis(headers, "x-mock-delay-ms").unwrap_or(Duration::ZERO),
            fault,
            body_kb: count(headers, "x-mock-body-kb").map(|kb| kb.min(MAX_BODY_KB)),
            cache_read: number(headers, "x-mock-cache-read").unwrap_or(0),
            cache_write: number(headers, "x-mock-cache-write").unwrap_or(0),
            cached_tokens: number(headers, "x-mock-cached-tokens").unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_values_fall_back_to_defaults() {
        let mut headers = HeaderMap::new();
        headers.insert("x-mock-chunks", HeaderValue::from_static("abc"));
        headers.insert("x-mock-chunk-delay-ms", HeaderValue::from_static("-3"));
        headers.insert("x-mock-status", HeaderValue::from_static("200"));
        headers.insert("x-mock-usage", HeaderValue::from_static("sometimes"));
        headers.insert("x-mock-fault", HeaderValue::from_static("explode"));
        let opts = MockOptions::from_headers(&headers, &MockConfig::default());
        assert_eq!(opts.chunks, 8);
        assert_eq!(opts.chunk_delay, Duration::ZERO);
        assert_eq!(opts.status, None);
        assert_eq!(opts.usage, UsageMode::Requested);
        assert_eq!(opts.fault, None);
        assert!(!opts.tool_call);
    }

    #[test]
    fn valid_values_override() {
        let mut headers = HeaderMap::new();
        headers.insert("x-mock-chunks", HeaderValue::from_static(" 3 "));
        headers.insert("x-mock-ttft-ms", HeaderValue::from_static("15"));
        headers.insert("x-mock-status", HeaderValue::from_static("503"));
        headers.insert("x-mock-usage", HeaderValue::from_static("None"));
        headers.insert("x-mock-fault", HeaderValue::from_static("stall"));
        headers.insert("x-mock-tool-call", HeaderValue::from_static("1"));
        let opts = MockOptions::from_headers(&headers, &MockConfig::default());
        assert_eq!(opts.chunks, 3);
        assert_eq!(opts.ttft, Duration::from_millis(15));
        assert_eq!(opts.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(opts.usage, UsageMode::None);
        assert_eq!(opts.fault, Some(Fault::Stall));
        assert!(opts.tool_call);
    }
}
