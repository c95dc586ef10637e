//! LLM summaries for compaction: one non-streaming request to the configured summary model through the proxy's
//! own upstream client, recorded as a request of its own (so its cost is counted like any other).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use super::error::ProxyError;
use super::{ProxyState, apply_credentials, failed, request, unix_ms, upstream, upstream_uri};
use crate::accounting::tracker::{Outcome, RequestContext, Tracker};
use crate::config::BaseUrl;

/// Largest summary answer read.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

const INSTRUCTIONS: &str = "You compress the earlier part of a conversation between a user and an AI coding agent so \
that the agent can continue the task without it. Write a concise summary: the task and its constraints, decisions \
taken, files read or changed (with paths), commands run and their outcomes, errors met and how they were resolved, \
and what remains to do. Keep identifiers, paths and numbers exact. Do not add anything that is not in the text.";

/// Asks `model_key` to summarise `transcript`; `Err` says why there is no summary (the request then goes on
/// uncompacted).
pub async fn summarize(
    state: &ProxyState,
    model_key: &str,
    transcript: String,
    max_tokens: u64,
    timeout: Duration,
    client_session: Option<String>,
) -> Result<String, String> {
    let model = state
        .catalog
        .resolve(model_key)
        .cloned()
        .ok_or_else(|| format!("summary model `{model_key}` is not in the catalog"))?;
    let upstream = state
        .upstreams
        .get(&model.provider)
        .ok_or_else(|| format!("no provider `{}`", model.provider))?;
    let provider = &upstream.provider;
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
    let bytes = Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
    let view = request::inspect(&bytes).map_err(|e| e.to_string())?;
    let tokenizer = state.accounting.tokenizer_for(&model);
    let prompt_job =
        state
            .accounting
            .prompt_job(bytes.clone(), view.layout, tokenizer.tokenizer.clone());
    let started = Instant::now();
    let mut context = RequestContext {
        id: state.accounting.next_id(),
        started,
        started_at_ms: unix_ms(),
        model: Arc::clone(&model),
        tokenizer,
        streaming: false,
        attempts: 0,
        tool_call_fixes: 0,
        usage_injected: false,
        status: 0,
        upstream_headers_us: None,
        upstream_us: None,
        overhead_us: None,
        client_session,
        cache_store: None,
        cache_hit: false,
        virtual_key: None,
        context: None,
    };
    let prepared = match &provider.base_url {
        BaseUrl::Ready(base) => upstream_uri(base, None).and_then(|uri| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            apply_credentials(&mut headers, provider, false)?;
            Ok((uri, headers))
        }),
        BaseUrl::Missing { var } => Err(ProxyError::MissingBaseUrlVar {
            provider: provider.key.clone(),
            var: var.clone(),
        }),
    };
    let (uri, headers) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            let message = error.to_string();
            failed(state, context, prompt_job.start(), error);
            return Err(message);
        }
    };
    let outgoing = upstream::OutgoingRequest {
        uri,
        headers,
        body: bytes,
    };
    let exchange = async {
        let answer =
            upstream::send_with_retries(&upstream.client, provider, &outgoing, &upstream.throttled)
                .await?;
        let attempts = answer.attempts;
        let (parts, incoming) = answer.response.into_parts();
        let headers_at = Instant::now();
        let body = Limited::new(incoming, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ProxyError::UpstreamUnreachable {
                provider: provider.key.clone(),
                reason: format!("summary answer unreadable: {e}"),
            })?
            .to_bytes();
        Ok::<_, ProxyError>((parts.status.as_u16(), attempts, headers_at, body))
    };
    let result = match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ProxyError::UpstreamTimeout {
            provider: provider.key.clone(),
            phase: "compaction summary",
            timeout_ms: timeout.as_millis(),
        }),
    };
    let (status, attempts, headers_at, answer) = match result {
        Ok(ok) => ok,
        Err(error) => {
            let message = error.to_string();
            failed(state, context, prompt_job.start(), error);
            return Err(message);
        }
    };
    context.status = status;
    context.attempts = attempts;
    context.upstream_us = Some(headers_at.duration_since(started).as_micros() as u64);
    context.upstream_headers_us = context.upstream_us;
    let counting = state.config.server.token_accounting;
    let mut tracker = Tracker::new(
        Arc::clone(&state.accounting),
        context,
        prompt_job.start(),
        false,
        counting,
    );
    let _ = tracker.on_data(&answer);
    tracker.finish(Outcome::Complete);
    if status != 200 {
        return Err(format!(
            "summary model `{model_key}` answered HTTP {status}"
        ));
    }
    let value: Value =
        serde_json::from_slice(&answer).map_err(|e| format!("summary answer is not JSON: {e}"))?;
    value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("summary model `{model_key}` gave no text"))
}
