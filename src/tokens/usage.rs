//! The provider's own token figures (`usage`), in the shapes providers actually send.

use serde::Deserialize;

/// `usage` as found on the wire. Every field is optional: providers differ.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    /// OpenAI: `prompt_tokens_details.cached_tokens`.
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    /// OpenAI: `completion_tokens_details.reasoning_tokens`.
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
    /// Moonshot/Kimi report cache hits at the top level.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    /// DeepSeek.
    #[serde(default)]
    pub prompt_cache_hit_tokens: Option<u64>,
    /// The Responses API names them `input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens` and
    /// `output_tokens_details.reasoning_tokens` (openai-python `types/responses/response_usage.py`).
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub input_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub output_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

/// The provider's figures, normalised.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReportedUsage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub cached: Option<u64>,
    pub reasoning: Option<u64>,
    /// Prompt tokens written to the provider's cache (Anthropic only), part of `prompt`.
    pub cache_write: Option<u64>,
}

impl WireUsage {
    /// `None` when the object carries no figure at all (some providers send `"usage": null` or `{}`).
    pub fn normalize(&self) -> Option<ReportedUsage> {
        let prompt = self.prompt_tokens.or(self.input_tokens);
        let completion = self
            .completion_tokens
            .or(self.output_tokens)
            .or_else(|| Some(self.total_tokens?.saturating_sub(prompt?)));
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .or(self.input_tokens_details.as_ref())
            .and_then(|d| d.cached_tokens)
            .or(self.cached_tokens)
            .or(self.prompt_cache_hit_tokens);
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .or(self.output_tokens_details.as_ref())
            .and_then(|d| d.reasoning_tokens);
        if prompt.is_none() && completion.is_none() {
            return None;
        }
        Some(ReportedUsage {
            prompt,
            completion,
            cached,
            reasoning,
            cache_write: None,
        })
    }
}

/// Anthropic's `usage` as on the wire (anthropics/anthropic-sdk-python `src/anthropic/types/usage.py` and
/// `message_delta_usage.py`): "Total input tokens in a request is the summation of `input_tokens`,
/// `cache_creation_input_tokens`, and `cache_read_input_tokens`". The cache fields may be `null`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct WireMessagesUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
}

/// Anthropic usage gathered over a stream: `message_start` carries the input figures, `message_delta` the
/// (cumulative) output and possibly updated input figures; a field present later replaces the earlier one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MessagesUsage {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
}

impl MessagesUsage {
    pub fn update(&mut self, wire: &WireMessagesUsage) {
        self.input = wire.input_tokens.or(self.input);
        self.output = wire.output_tokens.or(self.output);
        self.cache_read = wire.cache_read_input_tokens.or(self.cache_read);
        self.cache_write = wire.cache_creation_input_tokens.or(self.cache_write);
    }

    /// In the record's terms: `prompt` is the whole prompt (plain input, cache reads and cache writes),
    /// `cached` the cache reads. `None` when no figure came.
    pub fn normalize(&self) -> Option<ReportedUsage> {
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        let cache_read = self.cache_read.unwrap_or(0);
        let cache_write = self.cache_write.unwrap_or(0);
        Some(ReportedUsage {
            prompt: self
                .input
                .map(|n| n.saturating_add(cache_read).saturating_add(cache_write)),
            completion: self.output,
            cached: Some(cache_read),
            reasoning: None,
            cache_write: Some(cache_write),
        })
    }
}

/// Reads `usage` from a whole Anthropic message.
pub fn from_message_body(body: &[u8]) -> Option<ReportedUsage> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        usage: Option<WireMessagesUsage>,
    }
    let wire = serde_json::from_slice::<Body>(body).ok()?.usage?;
    let mut usage = MessagesUsage::default();
    usage.update(&wire);
    usage.normalize()
}

/// Reads `usage` from a whole (non-streaming) chat completion body.
pub fn from_completion_body(body: &[u8]) -> Option<ReportedUsage> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        usage: Option<WireUsage>,
    }
    serde_json::from_slice::<Body>(body)
        .ok()?
        .usage?
        .normalize()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn provider_shapes() {
        let openai = br#"{"usage":{"prompt_tokens":100,"completion_tokens":20,"total_tokens":120,
            "prompt_tokens_details":{"cached_tokens":64},"completion_tokens_details":{"reasoning_tokens":12}}}"#;
        assert_eq!(
            from_completion_body(openai).unwrap(),
            ReportedUsage {
                prompt: Some(100),
                completion: Some(20),
                cached: Some(64),
                reasoning: Some(12),
                cache_write: None,
            }
        );
        let moonshot = br#"{"usage":{"prompt_tokens":50,"completion_tokens":5,"total_tokens":55,"cached_tokens":32}}"#;
        assert_eq!(from_completion_body(moonshot).unwrap().cached, Some(32));
        let deepseek = br#"{"usage":{"prompt_tokens":50,"completion_tokens":5,"prompt_cache_hit_tokens":8,"prompt_cache_miss_tokens":42}}"#;
        assert_eq!(from_completion_body(deepseek).unwrap().cached, Some(8));
        let total_only = br#"{"usage":{"prompt_tokens":50,"total_tokens":55}}"#;
        assert_eq!(
            from_completion_body(total_only).unwrap().completion,
            Some(5)
        );
        let responses = br#"{"object":"response","usage":{"input_tokens":90,"input_tokens_details":{"cached_tokens":40},
            "output_tokens":30,"output_tokens_details":{"reasoning_tokens":10},"total_tokens":120}}"#;
        assert_eq!(
            from_completion_body(responses).unwrap(),
            ReportedUsage {
                prompt: Some(90),
                completion: Some(30),
                cached: Some(40),
                reasoning: Some(10),
                cache_write: None
            }
        );
        assert_eq!(from_completion_body(br#"{"usage":null}"#), None);
        assert_eq!(from_completion_body(br#"{"usage":{}}"#), None);
        assert_eq!(from_completion_body(b"garbage"), None);
    }

    #[test]
    fn anthropic_usage_excludes_cache_from_input() {
        let body = br#"{"usage":{"input_tokens":10,"cache_read_input_tokens":200,"cache_creation_input_tokens":30,"output_tokens":7}}"#;
        let usage = from_message_body(body).unwrap();
        assert_eq!(usage.prompt, Some(240));
        assert_eq!(usage.cached, Some(200));
        assert_eq!(usage.cache_write, Some(30));
        assert_eq!(usage.completion, Some(7));
        let nulls =
            br#"{"usage":{"input_tokens":5,"cache_read_input_tokens":null,"output_tokens":1}}"#;
        assert_eq!(from_message_body(nulls).unwrap().prompt, Some(5));
        assert_eq!(from_message_body(br#"{"usage":{}}"#), None);
    }
}
