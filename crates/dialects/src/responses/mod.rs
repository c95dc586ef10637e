//! OpenAI Responses (`POST /v1/responses`) ⇄ chat completions.
//!
//! Codex CLI and the newer OpenAI SDK helpers speak only the Responses API; most providers speak only chat
//! completions. This module translates at the two edges of a request:
//!
//! 1. [`request_to_chat`]: the client's Responses request (plus the stored items of its
//!    `previous_response_id`, looked up by the proxy) → a chat completions request body, and a [`Translated`]
//!    carrying what the proxy keeps for the answer (the client's model, the echoed parameters, the reverse map
//!    of flattened tool names, `store`, the session key, what was dropped).
//! 2. [`chat_to_response`]: a chat completion JSON answer → a Response object; or, for a streamed answer,
//!    [`StreamTranslator`]: one chat SSE `data:` payload at a time → Responses SSE events
//!    (`response.created` … `response.completed`), in bounded memory.
//!
//! Then [`items_to_store`] gives what the proxy stores under the new response id when `store` is true, and
//! [`previous_not_found`] the API's 404 when a `previous_response_id` is unknown. For Responses-native
//! providers (no translation), [`read_usage`] and [`usage_from_event`] read a Response's usage for accounting.
//!
//! How the proxy uses it, per request to a chat provider:
//!
//! ```text
//! let previous = previous_response_id(body).map(|id| store.get(&id));      // None → previous_not_found(id)
//! let t = request_to_chat(body, &ChatTarget { .. }, previous.as_deref())?;   // Err(e) → (e.status, e.body())
//! send t.body upstream (t.stream says whether it streams); record t.dropped, t.session_id
//! JSON:   let r = chat_to_response(upstream_body, &t.answer)?;  answer r
//! stream: let mut s = StreamTranslator::new(t.answer.clone());
//!         for each upstream `data:` payload: s.push(payload, &mut out); send out
//!         at the end of the upstream body:   s.finish(&mut out);       send out
//!         let r = s.final_response();  s.usage() for accounting
//! if t.store: store.put(t.answer.response_id, items_to_store(&t, r))
//! ```
//!
//! Formats were read from the OpenAI Python SDK's generated types (openai/openai-python,
//! `src/openai/types/responses/*.py`) and from what Codex sends and parses (openai/codex,
//! `codex-rs/codex-api/src/common.rs` `ResponsesApiRequest`, `codex-rs/codex-api/src/sse/responses.rs`
//! `process_sse`, `codex-rs/tools/src/tool_spec.rs` / `responses_api.rs` for `namespace` tools).

mod answer;
mod error;
mod request;
mod state;
mod stream;
mod tools;
mod usage;

pub use answer::chat_to_response;
pub use error::{TranslateError, error_body};
pub use request::{
    AnswerContext, ChatTarget, Dropped, Translated, previous_response_id, request_to_chat,
};
pub use state::{items_to_store, previous_not_found};
pub use stream::StreamTranslator;
pub use tools::{ToolNames, ToolRef};
pub use usage::{ResponsesUsage, read_usage, usage_from_event};
