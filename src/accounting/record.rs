//! The accounting record of one proxied request.

use serde::Serialize;

use crate::config::Prices;
use crate::tokens::chat::PromptCount;

impl RequestRecord {
    /// What the monitor keeps of it.
    pub fn sample(&self) -> crate::monitor::RequestSample<'_> {
        crate::monitor::RequestSample {
            provider: &self.provider,
            model: &self.model,
            latency_us: self.latency_us,
            overhead_us: self.overhead_us,
            ttft_us: self.ttft_us,
            upstream_us: self.upstream_us,
            counting_us: self.counting_us,
            error_kind: self.error_kind.as_deref(),
        }
    }
}

/// Everything known about one request once it is over. The store writes it, the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub id: u64,
    /// The instance that served it (`[cluster] instance_id`); `None` outside a server (tests, benchmarks).
    pub instance: Option<std::sync::Arc<str>>,
    /// Unix time in milliseconds when the request arrived.
    pub started_at_ms: i64,
    /// Catalog key, provider key and the id sent upstream.
    pub model: String,
    pub provider: String,
    pub upstream_model: String,
    pub streaming: bool,
    /// HTTP status the client received (0 when the client left before the headers).
    pub status: u16,
    /// Why the request did not complete normally, if it did not.
    pub error_kind: Option<String>,

    /// Our prompt count with the model's tokenizer, and the same after calibration.
    pub prompt_estimated: u64,
    pub prompt_calibrated: u64,
    pub calibration_ratio: Option<f64>,
    /// The provider's prompt figure.
    pub prompt_reported: Option<u64>,
    /// Our completion count (content + reasoning + tool calls).
    pub completion_estimated: u64,
    pub completion_reported: Option<u64>,
    pub cached_reported: Option<u64>,
    /// Prompt tokens the provider reported writing to its cache (Anthropic's `cache_creation_input_tokens`);
    /// part of `prompt_tokens`, priced at the cache-write price. Not stored in the database yet.
    pub cache_write_reported: Option<u64>,
    pub reasoning_estimated: u64,
    pub reasoning_reported: Option<u64>,
    /// The figures that count: the provider's where it reported them, ours (calibrated) otherwise.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// True when `prompt_tokens`/`completion_tokens` include an estimate.
    pub tokens_estimated: bool,
    /// `1 - |estimate - reported| / reported` for the prompt, when the provider reported it.
    pub prompt_accuracy: Option<f64>,
    pub completion_accuracy: Option<f64>,
    /// Whether our count used the model's own tokenizer.
    pub tokenizer: String,
    pub tokenizer_exact: bool,
    pub prompt_breakdown: PromptCount,

    pub cost_usd: f64,
    pub cost_estimated: bool,

    pub counting_us: u64,
    pub latency_us: u64,
    pub ttft_us: Option<u64>,
    pub upstream_headers_us: Option<u64>,
    /// From sending upstream to the upstream's response headers (retries included).
    pub upstream_us: Option<u64>,
    /// Time spent in the proxy itself before sending and after the upstream's headers, upstream excluded.
    pub overhead_us: Option<u64>,
    pub attempts: u32,
    /// Each upstream attempt's timing and status (the trace's child spans); empty when the upstream never
    /// answered (the send failed) or for a cache hit.
    #[serde(skip)]
    pub upstream_attempts: Vec<UpstreamAttempt>,
    pub tool_call_fixes: u32,
    pub usage_injected: bool,
    /// Answered from the response cache: no upstream call, no cost.
    pub cache_hit: bool,
    pub finish_reason: Option<String>,
    pub response_bytes: u64,
    /// The first characters of the last user message (configurable, may be off). Never the whole prompt.
    pub preview: Option<String>,
    /// The conversation id the client gave, if any.
    pub client_session: Option<String>,
    /// The name (never the value) of the virtual key the client authenticated with.
    pub virtual_key: Option<String>,
    /// The application that sent the request (`Claude Code 2.1.197`, `OpenAI Python SDK 1.57.0`…).
    pub client_app: Option<String>,
    /// The API the client spoke: `chat`, `messages` or `responses`.
    pub client_api: &'static str,
    /// Tools of the client's request dropped by the translation to the provider's API.
    pub dropped_tools: u32,
    /// Request fields, `anthropic-beta` features and content parts removed because the provider does not take
    /// them (an Anthropic-native provider's unsupported betas and fields). Not stored in the database yet.
    pub dropped_fields: u32,
    /// What the context transforms did (when any ran).
    pub context: Option<Box<crate::context::Outcome>>,
    /// Prompt tokens the context transforms removed, and their price at the model's input rate.
    pub tokens_saved: u64,
    pub cost_saved_usd: f64,
    /// Per-message content hashes, for recognising the conversation this request continues.
    #[serde(skip)]
    pub message_hashes: Vec<u64>,
}

/// One attempt at the upstream: when it started, how long until its response headers, what status came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamAttempt {
    /// From the request's arrival to the attempt's start.
    pub offset_us: u64,
    pub duration_us: u64,
    /// `None` when no answer came.
    pub status: Option<u16>,
    /// Why no answer came (`timeout`, `connect`).
    pub failure: Option<&'static str>,
}

/// Cost in USD: of the whole prompt, cached (read) tokens at the cached price, tokens written to the cache
/// (Anthropic's cache creation) at the cache-write price, the rest at the input price.
pub fn cost_usd(
    prices: &Prices,
    prompt: u64,
    cached: u64,
    cache_write: u64,
    completion: u64,
) -> f64 {
    let cached = cached.min(prompt);
    let cache_write = cache_write.min(prompt - cached);
    ((prompt - cached - cache_write) as f64 * prices.input
        + cached as f64 * prices.cached_input
        + cache_write as f64 * prices.cache_write
        + completion as f64 * prices.output)
        / 1_000_000.0
}

/// `1 - |estimate - reported| / reported`, floored at 0.
pub fn accuracy(estimate: u64, reported: u64) -> Option<f64> {
    (reported > 0)
        .then(|| (1.0 - (estimate as f64 - reported as f64).abs() / reported as f64).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_uses_cached_price_for_cached_tokens() {
        let prices = Prices {
            input: 2.0,
            output: 8.0,
            cached_input: 0.5,
            cache_write: 2.5,
        };
        let cost = cost_usd(&prices, 1_000_000, 400_000, 0, 100_000);
        assert!((cost - (0.6 * 2.0 + 0.4 * 0.5 + 0.1 * 8.0)).abs() < 1e-12);
        assert_eq!(cost_usd(&prices, 10, 50, 0, 0), 10.0 * 0.5 / 1e6);
        // Anthropic: 100 read, 300 written, 600 plain of a 1000-token prompt.
        let cost = cost_usd(&prices, 1000, 100, 300, 10);
        let expected = (600.0 * 2.0 + 100.0 * 0.5 + 300.0 * 2.5 + 10.0 * 8.0) / 1e6;
        assert!((cost - expected).abs() < 1e-15);
    }

    #[test]
    fn accuracy_bounds() {
        assert_eq!(accuracy(100, 100), Some(1.0));
        assert_eq!(accuracy(90, 100), Some(0.9));
        assert_eq!(accuracy(500, 100), Some(0.0));
        assert_eq!(accuracy(5, 0), None);
    }
}
