//! Reading a Responses `usage` for accounting, when the provider speaks Responses natively and the client's
//! bytes pass through untranslated.
//!
//! Shape: openai-python `types/responses/response_usage.py` (`input_tokens`, `input_tokens_details.
//! cached_tokens`, `output_tokens`, `output_tokens_details.reasoning_tokens`, `total_tokens`); the usage sits
//! in a Response object's `usage` and in the `response` of the `response.completed`, `response.incomplete`
//! and `response.failed` events.

use serde::Deserialize;
use serde_json::Value;

/// Token counts of one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponsesUsage {
    /// All prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Prompt tokens read from the provider's cache.
    pub cached_tokens: u64,
    /// All generated tokens, reasoning ones included.
    pub output_tokens: u64,
    /// Generated reasoning tokens.
    pub reasoning_tokens: u64,
    /// `total_tokens` as reported (input + output when absent).
    pub total_tokens: u64,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<RawInputDetails>,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    output_tokens_details: Option<RawOutputDetails>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct RawInputDetails {
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(Deserialize)]
struct RawOutputDetails {
    #[serde(default)]
    reasoning_tokens: u64,
}

impl From<RawUsage> for ResponsesUsage {
    fn from(raw: RawUsage) -> Self {
        Self {
            input_tokens: raw.input_tokens,
            cached_tokens: raw.input_tokens_details.map_or(0, |d| d.cached_tokens),
            output_tokens: raw.output_tokens,
            reasoning_tokens: raw.output_tokens_details.map_or(0, |d| d.reasoning_tokens),
            total_tokens: raw
                .total_tokens
                .unwrap_or(raw.input_tokens.saturating_add(raw.output_tokens)),
        }
    }
}

/// Reads a Responses `usage` object. `None` when it is not one (null, or not an object).
pub fn read_usage(usage: &Value) -> Option<ResponsesUsage> {
    if !usage.is_object() {
        return None;
    }
    RawUsage::deserialize(usage).ok().map(Into::into)
}

/// Reads the usage from one Responses SSE `data:` payload (of a `response.completed`, `response.incomplete`
/// or `response.failed` event) or from a whole Response JSON body. `None` for other events and when no
/// usage is reported. Events of other types are recognised from their `type` without parsing the rest.
pub fn usage_from_event(data: &[u8]) -> Option<ResponsesUsage> {
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "type")]
        kind: Option<String>,
        response: Option<WithUsage>,
        usage: Option<RawUsage>,
    }
    #[derive(Deserialize)]
    struct WithUsage {
        usage: Option<RawUsage>,
    }
    // Cheap filter: deltas (the bulk of a stream) never carry usage.
    if !contains(data, b"\"usage\"") {
        return None;
    }
    let event: Event = serde_json::from_slice(data).ok()?;
    match event.kind.as_deref() {
        Some("response.completed" | "response.incomplete" | "response.failed") => {
            event.response?.usage.map(Into::into)
        }
        // A Response object (`object: "response"`, no `type`).
        None => event.usage.map(Into::into),
        Some(_) => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_completed_event_and_body() {
        let event = br#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":60},"output_tokens":20,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":120}}}"#;
        let usage = usage_from_event(event);
        assert_eq!(
            usage,
            Some(ResponsesUsage {
                input_tokens: 100,
                cached_tokens: 60,
                output_tokens: 20,
                reasoning_tokens: 5,
                total_tokens: 120
            })
        );
        let body =
            br#"{"id":"resp_1","object":"response","usage":{"input_tokens":3,"output_tokens":4}}"#;
        assert_eq!(usage_from_event(body).map(|u| u.total_tokens), Some(7));
        let delta = br#"{"type":"response.output_text.delta","delta":"usage"}"#;
        assert_eq!(usage_from_event(delta), None);
        assert_eq!(read_usage(&Value::Null), None);
    }
}
