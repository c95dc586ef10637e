//! The client APIs kimi-proxy speaks, and exact translation between them.
//!
//! kimi-proxy's pipeline talks to providers in the provider's own dialect. When a client speaks another API
//! than its provider, the pipeline translates at the two edges: the request on the way in, the answer (JSON or
//! event stream, one event at a time) on the way out. This crate holds those translations as pure functions
//! and small state machines over bytes: no I/O, no tokio, nothing of the proxy's state.
//!
//! - [`Dialect`]: which API a request or a provider speaks.
//! - `anthropic`: Anthropic Messages ⇄ chat completions.
//! - `responses`: OpenAI Responses ⇄ chat completions.

pub mod anthropic;
pub mod responses;

/// The wire API a client or a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI chat completions (`POST /v1/chat/completions`), spoken by most providers.
    Chat,
    /// Anthropic Messages (`POST /v1/messages`).
    Messages,
    /// OpenAI Responses (`POST /v1/responses`).
    Responses,
}

impl Dialect {
    /// The name recorded per request and shown on the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Chat => "chat",
            Dialect::Messages => "messages",
            Dialect::Responses => "responses",
        }
    }
}
