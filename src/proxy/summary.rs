//! LLM summaries for compaction: one non-streaming request to the configured summary model, recorded as a request of its own (so its cost is counted like any other). It goes through the pipeline's
//! admit and send phases like a client's request.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::error::ProxyError;
use super::{ProxyState, pipeline};

/// Largest summary answer read.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

const INSTRUCTIONS: &str = "You compress the earlier part of a conversation between a user and an AI coding agent so \
that the agent can continue the task without it. Write a concise summary: the task and its constraints, decisions \
taken, files read or changed (with paths), commands run and their outcomes, errors met and how they were resolved, \
and what remains to do. Keep identifiers, paths and numbers exact. Do not add anything that is not in the text.";

/// Why there is no summary (the request then goes on uncompacted).
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("summary model `{0}` is not in the catalog")]
    UnknownModel(String),
    #[error(transparent)]
    Request(#[from] ProxyError),
    #[error("summary model `{model}` answered HTTP {status}")]
    Status { model: String, status: u16 },
    #[error("summary unreadable: {0}")]
    Unreadable(String),
    #[error("summary model `{0}` gave no text")]
    NoText(String),
}

/// Asks `model_key` to summarise `transcript`.
pub async fn summarize(
    state: &ProxyState,
    model_key: &str,
    transcript: String,
    max_tokens: u64,
    timeout: Duration,
    client_session: Option<String>,
) -> Result<String, SummaryError> {
    let model = state
        .catalog
        .resolve(model_key)
        .ok_or_else(|| SummaryError::UnknownModel(model_key.to_string()))?;
    let body = serde_json::json!({
        "model": model.upstream_id,
        "stream": false,
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": transcript},
        ],
    });
    let bytes = Bytes::from(
        serde_json::to_vec(&body).map_err(|e| SummaryError::Unreadable(e.to_string()))?,
    );
    let (status, answer) = pipeline::internal_call(
        state,
        model_key,
        bytes,
        client_session,
        timeout,
        MAX_ANSWER_BYTES,
    )
    .await?;
    if status != 200 {
        return Err(SummaryError::Status {
            model: model_key.to_string(),
            status,
        });
    }
    let value: Value = serde_json::from_slice(&answer)
        .map_err(|e| SummaryError::Unreadable(format!("the answer is not JSON: {e}")))?;
    value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_string)
        .ok_or_else(|| SummaryError::NoText(model_key.to_string()))
}
