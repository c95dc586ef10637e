//! The shape phase's work on a request body: the context transforms (masking, observation masking,
//! compaction) and the slow path that re-encodes a body whose tool calls need mending.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::error::ProxyError;
use super::reasoning::ReasoningMemory;
use super::toolcalls::{self, ToolCallFixes};
use super::{ProxyState, request, summary};
use crate::config::Model;
use crate::context::{self, Outcome as ContextOutcome};

/// Bodies larger than this are transformed on the blocking pool (their counts may need tokenising).
const INLINE_CONTEXT_LIMIT: usize = 32 * 1024;
/// Largest transcript sent to a summary model.
const MAX_SUMMARY_INPUT_CHARS: usize = 200_000;

/// Runs the context transforms. Never fails the request: on any error the body goes on unchanged and the
/// error is in the outcome.
pub(super) async fn context_step(
    state: &ProxyState,
    model: &Arc<Model>,
    bytes: &Bytes,
    view: &request::ChatRequestView,
    resolved: context::Resolved,
    client_session: Option<String>,
) -> (Option<context::Rendered>, ContextOutcome) {
    let plan_request = context::PlanRequest {
        body: bytes.clone(),
        layout: view.layout.clone(),
        resolved,
        window: model.max_context_size,
        conversation_key: context::conversation_key(client_session.as_deref(), bytes, &view.layout),
        dry_run: false,
    };
    let step = run_plan(
        state,
        model,
        bytes.len(),
        client_session,
        move |engine, counter| Some(engine.plan(plan_request, counter)),
    )
    .await;
    // The chat plan always exists.
    step.unwrap_or_default()
}

/// Compaction of an Anthropic Messages request on the native route (`prior`: what masking and observation
/// did to its `tool_result` blocks): chat's decision, summary and outcome, on the Messages body. `None` when
/// the body is not a Messages request (nothing was counted).
pub(super) async fn native_compaction_step(
    state: &ProxyState,
    model: &Arc<Model>,
    bytes: &Bytes,
    resolved: context::Resolved,
    client_session: Option<String>,
    prior: Option<ContextOutcome>,
) -> Option<(Option<context::Rendered>, ContextOutcome)> {
    let body = bytes.clone();
    let window = model.max_context_size;
    let session = client_session.clone();
    run_plan(
        state,
        model,
        bytes.len(),
        client_session,
        move |engine, counter| {
            engine.plan_anthropic(body, resolved, window, session.as_deref(), prior, counter)
        },
    )
    .await
}

/// Plans (on the blocking pool for a large body or a tokenizer still loading), asks the summary model when a
/// compaction is pending and one is configured, then finishes the plan.
async fn run_plan(
    state: &ProxyState,
    model: &Arc<Model>,
    body_len: usize,
    client_session: Option<String>,
    plan: impl FnOnce(
        &context::ContextEngine,
        &context::conversation::Counter<'_>,
    ) -> Option<context::Plan>
    + Send
    + 'static,
) -> Option<(Option<context::Rendered>, ContextOutcome)> {
    let engine = Arc::clone(&state.context);
    let accounting = Arc::clone(&state.accounting);
    let tokenizer = accounting.tokenizer_for(model).tokenizer;
    let blocking = body_len > INLINE_CONTEXT_LIMIT || !tokenizer.is_ready();
    let plan = if blocking {
        let (engine, accounting, tokenizer) = (
            Arc::clone(&engine),
            Arc::clone(&accounting),
            tokenizer.clone(),
        );
        match tokio::task::spawn_blocking(move || {
            let counter = context::conversation::Counter {
                tokenizer: &tokenizer,
                cache: accounting.message_cache(),
            };
            plan(&engine, &counter)
        })
        .await
        {
            Ok(plan) => plan?,
            Err(error) => {
                return Some((
                    None,
                    state
                        .context
                        .failed(&format!("context step failed: {error}")),
                ));
            }
        }
    } else {
        let counter = context::conversation::Counter {
            tokenizer: &tokenizer,
            cache: accounting.message_cache(),
        };
        plan(&engine, &counter)?
    };
    let llm = match (
        engine.summary_model(),
        plan.summary_input(MAX_SUMMARY_INPUT_CHARS),
    ) {
        (Some(summary_model), Some(transcript)) => {
            let config = &engine.config.compaction;
            Some(
                summary::summarize(
                    state,
                    summary_model,
                    transcript,
                    config.summary_max_tokens,
                    config.summary_timeout,
                    client_session,
                )
                .await
                .map_err(|error| error.to_string()),
            )
        }
        _ => None,
    };
    if let Some(Err(error)) = &llm {
        tracing::warn!(%error, "compaction summary failed; the request goes on uncompacted");
    }
    let finish = move || {
        let counter = context::conversation::Counter {
            tokenizer: &tokenizer,
            cache: accounting.message_cache(),
        };
        engine.finish(plan, llm, &counter)
    };
    Some(if blocking {
        match tokio::task::spawn_blocking(finish).await {
            Ok(done) => done,
            Err(error) => (
                None,
                state
                    .context
                    .failed(&format!("context step failed: {error}")),
            ),
        }
    } else {
        finish()
    })
}

fn encode(json: &Value) -> Result<Bytes, ProxyError> {
    serde_json::to_vec(json)
        .map(Bytes::from)
        .map_err(|e| ProxyError::InvalidRequest(format!("cannot re-encode the request: {e}")))
}

/// The slow path: parse into a tree, rename the model, mend tool calls, put back dropped reasoning (for a model
/// that needs it), ask for usage; re-encode. Returns the
/// body as the client meant it (mended), the same with the usage request, and what was mended.
pub(super) fn rebuild_body(
    bytes: &[u8],
    upstream_id: Option<&str>,
    inject_usage: bool,
    reasoning: Option<&ReasoningMemory>,
) -> Result<(Bytes, Option<Bytes>, ToolCallFixes), ProxyError> {
    let mut json: Value = serde_json::from_slice(bytes).map_err(|e| ProxyError::InvalidJson {
        message: e.to_string(),
        line: e.line(),
        column: e.column(),
    })?;
    let Some(object) = json.as_object_mut() else {
        return Err(ProxyError::InvalidRequest(
            "the body must be a JSON object".to_string(),
        ));
    };
    if let Some(id) = upstream_id {
        object.insert("model".to_string(), Value::String(id.to_string()));
    }
    let mut fixes = toolcalls::normalize_tool_calls(&mut json);
    if let Some(memory) = reasoning {
        fixes.reasoning_restored = memory.restore(&mut json);
    }
    let plain = encode(&json)?;
    let injected = match (inject_usage, json.as_object_mut()) {
        (true, Some(object)) => {
            let options = object
                .entry("stream_options")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if !options.is_object() {
                *options = Value::Object(serde_json::Map::new());
            }
            if let Some(options) = options.as_object_mut() {
                options.insert("include_usage".to_string(), Value::Bool(true));
            }
            Some(encode(&json)?)
        }
        _ => None,
    };
    Ok((plain, injected, fixes))
}
