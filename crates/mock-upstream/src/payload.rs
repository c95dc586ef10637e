//! Wire payloads (OpenAI shapes) and the deterministic texts they carry.
//!
//! Structs (rather than `serde_json::Value`) keep the field order fixed, so
//! the serialized bytes are deterministic and look like the real API.

use bytes::Bytes;
use serde::Serialize;

/// `created` timestamp used everywhere.
pub(crate) const CREATED: u64 = 1_700_000_000;
/// The model reported when the request names none.
pub(crate) const DEFAULT_MODEL: &str = "mock-model";
pub(crate) const TOOL_CALL_ID: &str = "call_mock";
pub(crate) const TOOL_NAME: &str = "get_weather";
/// The streamed pieces of the tool call's arguments.
pub(crate) const TOOL_ARG_PIECES: [&str; 3] = ["{\"city\":", " \"Paris\"", "}"];

/// The content of streamed delta `i`. Every fifth chunk (i % 5 == 4) carries
/// non-ASCII text so token counting sees multi-byte characters.
pub fn sse_chunk_text(i: usize) -> String {
    if i % 5 == 4 {
        format!("héllo 世界{i} ")
    } else {
        format!("tok{i} ")
    }
}

/// The reasoning text of reasoning delta `i`.
pub(crate) fn reasoning_text(i: usize) -> String {
    format!("think{i} ")
}

/// The concatenated content of `chunks` deltas.
pub(crate) fn full_text(chunks: usize) -> String {
    (0..chunks).map(sse_chunk_text).collect()
}

/// Pads `text` with ASCII filler until it is at least `kb` KiB long.
pub(crate) fn pad_to_kb(text: &mut String, kb: usize) {
    const FILLER: &str = "lorem ipsum dolor sit amet ";
    let target = kb.saturating_mul(1024);
    while text.len() < target {
        let missing = target - text.len();
        text.push_str(&FILLER[..missing.min(FILLER.len())]);
    }
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) total_tokens: u64,
}

impl Usage {
    pub(crate) fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

// ---------------------------------------------------------------- JSON mode

#[derive(Serialize)]
pub(crate) struct ChatCompletion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
}

#[derive(Serialize)]
pub(crate) struct Choice<'a> {
    pub(crate) index: u32,
    pub(crate) message: Message<'a>,
    pub(crate) finish_reason: &'static str,
}

#[derive(Serialize)]
pub(crate) struct Message<'a> {
    pub(crate) role: &'static str,
    pub(crate) content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_calls: Option<[ToolCall; 1]>,
}

#[derive(Serialize)]
pub(crate) struct ToolCall {
    pub(crate) id: &'static str,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) function: FunctionCall,
}

#[derive(Serialize)]
pub(crate) struct FunctionCall {
    pub(crate) name: &'static str,
    pub(crate) arguments: String,
}

impl ToolCall {
    pub(crate) fn mock() -> Self {
        Self {
            id: TOOL_CALL_ID,
            kind: "function",
            function: FunctionCall {
                name: TOOL_NAME,
                arguments: TOOL_ARG_PIECES.concat(),
            },
        }
    }
}

// ----------------------------------------------------------------- SSE mode

#[derive(Serialize)]
pub(crate) struct Chunk<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
}

#[derive(Serialize)]
pub(crate) struct ChunkChoice<'a> {
    pub(crate) index: u32,
    pub(crate) delta: Delta<'a>,
    pub(crate) finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
pub(crate) struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
pub(crate) struct ToolCallDelta<'a> {
    pub(crate) index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<&'static str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    pub(crate) function: FunctionDelta<'a>,
}

#[derive(Serialize)]
pub(crate) struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<&'static str>,
    pub(crate) arguments: &'a str,
}

/// Serializes `value` as one SSE event: `data: JSON\n\n`.
pub(crate) fn sse_event<T: Serialize>(value: &T) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Serializing these plain structs cannot fail; fall back to an empty
    // object rather than panicking, just in case.
    if serde_json::to_writer(&mut out, value).is_err() {
        out.truncate(6);
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The terminating SSE event.
pub(crate) const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

// ------------------------------------------------------------------- others

#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub(crate) error: ErrorDetail<'a>,
}

#[derive(Serialize)]
pub(crate) struct ErrorDetail<'a> {
    pub(crate) message: &'a str,
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    pub(crate) param: Option<&'a str>,
    pub(crate) code: Option<&'a str>,
}

#[derive(Serialize)]
pub(crate) struct ModelList {
    pub(crate) object: &'static str,
    pub(crate) data: [ModelEntry; 1],
}

#[derive(Serialize)]
pub(crate) struct ModelEntry {
    pub(crate) id: &'static str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) owned_by: &'static str,
}

impl ModelList {
    pub(crate) fn mock() -> Self {
        Self {
            object: "list",
            data: [ModelEntry {
                id: DEFAULT_MODEL,
                object: "model",
                created: CREATED,
                owned_by: "mock",
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fifth_chunk_is_unicode() {
        assert_eq!(sse_chunk_text(0), "tok0 ");
        assert!(sse_chunk_text(3).is_ascii());
        assert!(!sse_chunk_text(4).is_ascii());
        assert!(!sse_chunk_text(9).is_ascii());
        assert_eq!(full_text(2), "tok0 tok1 ");
    }

    #[test]
    fn padding_reaches_target() {
        let mut text = String::from("abc");
        pad_to_kb(&mut text, 3);
        assert_eq!(text.len(), 3 * 1024);
        let mut long = "x".repeat(5000);
        pad_to_kb(&mut long, 1);
        assert_eq!(long.len(), 5000);
    }

    #[test]
    fn empty_delta_serializes_as_empty_object() {
        let chunk = Chunk {
            id: "chatcmpl-mock-1",
            object: "chat.completion.chunk",
            created: CREATED,
            model: "m",
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta::default(),
                finish_reason: Some("stop"),
            }],
            usage: None,
        };
        assert_eq!(
            &sse_event(&chunk)[..],
            &b"data: {\"id\":\"chatcmpl-mock-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"[..]
        );
    }
}
